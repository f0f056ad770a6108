#!/usr/bin/env bash
# The engine's first-GPU smoke test: one line per check, exit 1 when any fails (docs/engine.md).
#   benchmarks/gpu_smoke.sh                      # on one H100/H200 (NCCL world size 1, gloo for several ranks)
#   SMOKE_DEVICE=cpu benchmarks/gpu_smoke.sh     # the same checks on this CPU (gloo), small sizes
# SMOKE_OUT=<dir> keeps the run folders (default outputs/smoke/<device>-<time>); PYTHON=<interpreter>.
# Checks: calibrate; world size 1 fp32 and bf16 with the reference check; the DeepSeek-V2-Lite shape (the
# real trace when ../shared has it, else its synthetic preset) with the reference check and the calibration
# loaded; the one-GPU multi-rank mode (4 ranks on one device over gloo) with EPLB replicas; two_batch overlap.
set -u
cd "$(dirname "$0")/.."
DEVICE="${SMOKE_DEVICE:-cuda}"
PY="${PYTHON:-.venv/bin/python}"
OUT="${SMOKE_OUT:-outputs/smoke/${DEVICE}-$(date -u +%Y%m%dT%H%M%S)}"
mkdir -p "$OUT"
export SUITE_PROGRESS=0
if [ "$DEVICE" = cpu ]; then
  ONE=(engine.backend=gloo engine.device=cpu)
  MULTI=(engine.backend=gloo engine.device=cpu)
  CAL=(calibrate.device=cpu "calibrate.token_counts=[1,8,64,256]" calibrate.repeats=3)
  DS=(model.num_layers=1 engine.batch_tokens=128)
  SMALL=(engine.batch_tokens=256 trace.tokens=4096)
elif [ "$DEVICE" = cuda ]; then
  ONE=(engine.backend=nccl engine.device=cuda)
  MULTI=(engine.backend=gloo engine.device=cuda)   # the one-GPU multi-rank mode: W ranks share cuda:0
  CAL=(calibrate.device=cuda)
  DS=(model.num_layers=8 engine.batch_tokens=4096)  # 8 layers: enough points for model_layer_time_corr
  SMALL=(engine.batch_tokens=1024 trace.tokens=16384)
else
  echo "error: SMOKE_DEVICE must be cuda or cpu, got '$DEVICE'" >&2; exit 2
fi
if [ -f ../shared/data/moe/deepseek_v2_lite_prefill.npz ]; then
  DS_TRACE=(trace=deepseek_v2_lite)
else
  DS_TRACE=(trace=synthetic trace.preset=deepseek_v2_lite trace.tokens=8192)
fi
FAILED=0

line() {  # name run-dir status: one line with the record's main numbers, or the error
  "$PY" - "$@" <<'EOF'
import json, sys
from pathlib import Path
name, run, status = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
err = [l for l in (run / "stderr.txt").read_text().splitlines() if l.startswith("error:")] if (run / "stderr.txt").exists() else []
if status != 0 or not (run / "result.json").exists():
    print(f"FAIL {name}: status {status}: {err[0] if err else 'no record'}")
    sys.exit(1)
rec = json.loads((run / "result.json").read_text())
m, lb = rec["metrics"], rec.get("labels", {})
keys = ("calib_time_per_token_s", "calib_r2", "step_time_s", "tokens_per_s", "max_rel_err_vs_reference",
        "reference_ok", "model_layer_time_corr", "model_corr_points")
nums = " ".join(f"{k}={m[k]:.4g}" for k in keys if isinstance(m.get(k), (int, float)))
what = " ".join(f"{k}={lb[k]}" for k in ("device", "dtype", "backend", "expert_kernel", "overlap") if k in lb)
layout = f" [{lb['rank_layout']}]" if lb.get("rank_layout") else ""
print(f"PASS {name}: {nums} {what}{layout}")
EOF
}

check() {  # name overrides...: one runners.serve run into $OUT/name
  local name="$1"; shift
  local run="$OUT/$name"
  mkdir -p "$run"
  "$PY" -m runners.serve "$@" "hydra.run.dir=$run" >"$run/stdout.txt" 2>"$run/stderr.txt"
  line "$name" "$run" "$?" || FAILED=1
}

check calibrate mode=calibrate model=deepseek_v2_lite_shape "${CAL[@]}"
COMPUTE="topology.compute_file=$OUT/calibrate/compute.yaml"
check ws1_fp32 "${ONE[@]}" engine.nproc=1 engine.dtype=float32 engine.check_reference=true "${SMALL[@]}"
check ws1_bf16 "${ONE[@]}" engine.nproc=1 engine.dtype=bfloat16 engine.check_reference=true "${SMALL[@]}"
check deepseek_v2_lite "${ONE[@]}" engine.nproc=1 "${DS_TRACE[@]}" "${DS[@]}" engine.check_reference=true \
  engine.measure_iters=2 engine.warmup_iters=1 "$COMPUTE"
check one_device_4ranks_eplb "${MULTI[@]}" engine.nproc=4 placement=eplb engine.check_reference=true "${SMALL[@]}"
check two_batch_overlap "${ONE[@]}" engine.nproc=1 engine.overlap=two_batch engine.check_reference=true "${SMALL[@]}"
echo "smoke ($DEVICE): $([ $FAILED = 0 ] && echo all checks passed || echo some checks FAILED); runs in $OUT"
exit $FAILED
