"""``runners.serve``: the run record and its named metrics, one error line for bad input or a failing rank,
non-MoE models refused, calibrate mode on the CPU and its topology override read by ``runners.moe``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import yaml

from common.errors import ConfigError
from moe.engine.comm import init_distributed
from moe.engine.spec import EngineOptions
from moe.placement.simple import contiguous
from moe.topology import topology_from_config
from runners.serve import check_model_override, moe_model_options
from runners.serve_body import model_spec
from runners.serve_launch import GRACE_S, PEER_GONE, dead_rank_line, launch_local
from tests.conftest import CONF_DIR, REPO

ENV = {**os.environ, "PYTHONPATH": str(REPO), "SUITE_THREADS": "1", "SUITE_PROGRESS": "0"}


def serve(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "runners.serve", *args], cwd=REPO, env=ENV, capture_output=True, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


def test_two_rank_run_records_the_named_metrics(tmp_path: Path) -> None:
    proc = serve("engine.nproc=2", "engine.check_reference=true", "engine.measure_iters=2",
                 "trace.tokens=4096", f"hydra.run.dir={tmp_path}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    rec = json.loads((tmp_path / "result.json").read_text())
    m = rec["metrics"]
    for name in ("step_time_s", "a2a_time_tail_s", "tokens_per_s", "max_abs_err_vs_reference"):
        assert m[name] is not None and m[name] >= 0, name
    assert m["step_time_s"] > 0 and m["tokens_per_s"] > 0
    assert m["max_abs_err_vs_reference"] < 1e-4 and m["reference_ok"] == 1
    assert m["dispatch_matches_cost_model"] == 1 and m["world_size"] == 2
    assert rec["config"]["runtime"]["backend"] == "gloo"
    assert rec["config"]["runtime"]["device_names"] == ["cpu", "cpu"]
    lb = rec["labels"]
    assert (lb["device"], lb["dtype"], lb["backend"], lb["dispatch"], lb["overlap"]) == (
        "cpu", "float32", "gloo", "fast", "none")  # fmt: skip
    assert lb["rank_layout"].startswith("2 ranks on 1 node(s)") and lb["expert_kernel"] in (
        "grouped_mm",
        "bmm",
    )
    assert m["step_time_phased_s"] > 0  # the step with phase barriers, next to the un-barriered step_time_s
    assert {"placement.json", "engine.npz"} <= set(rec["artifacts"])
    with np.load(tmp_path / "engine.npz") as z:  # rows and bytes per rank pair vs the cost model's dispatch
        np.testing.assert_array_equal(z["sent_rows"], z["model_dispatch"])
        np.testing.assert_array_equal(z["sent_bytes"], z["model_dispatch"] * 64 * 4)  # H=64, fp32
        assert z["phase_s"].shape == (2, 2, 2, 3)  # ranks x iterations x layers x phases


@pytest.mark.slow
def test_placement_for_another_model_stops_every_rank_with_one_line(tmp_path: Path) -> None:
    contiguous(2, 16, 2).save(tmp_path / "p16.json")
    proc = serve("engine.nproc=2", f"placement_file={tmp_path / 'p16.json'}", "trace.tokens=2048",
                 f"hydra.run.dir={tmp_path / 'run'}", timeout=90)  # fmt: skip
    assert proc.returncode == 2
    assert error_lines(proc.stderr) == [
        "error: placement 'contiguous' has 16 experts per layer, model 'mixtral_tiny' has 8"
    ]
    assert not (tmp_path / "run" / "result.json").exists()


def _fault(cfg: dict, run_dir: str, roots: list[str]) -> None:
    """Rank 1 raises between collectives; rank 0 is left waiting in an all-reduce."""
    init_distributed(EngineOptions(backend="gloo", device="cpu", timeout_s=60))
    t = torch.ones(1)
    dist.all_reduce(t)
    if dist.get_rank() == 1:
        raise RuntimeError("injected fault")
    dist.all_reduce(t)


def test_a_rank_that_raises_stops_all_ranks_with_its_error_on_rank_0(capfd: pytest.CaptureFixture) -> None:
    assert launch_local(_fault, 2, {}, ".", []) == 2
    err = capfd.readouterr().err
    assert error_lines(err) == ["error: rank 1: RuntimeError: injected fault"], err[-2000:]


def _die(cfg: dict, run_dir: str, roots: list[str]) -> None:
    """Rank 1 is killed (no message) while rank 0 waits in an all-reduce."""
    init_distributed(EngineOptions(backend="gloo", device="cpu", timeout_s=60))
    t = torch.ones(1)
    dist.all_reduce(t)
    if dist.get_rank() == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    dist.all_reduce(t)


@pytest.mark.slow
def test_a_rank_that_dies_is_named(capfd: pytest.CaptureFixture) -> None:
    t0 = time.monotonic()
    assert launch_local(_die, 2, {}, ".", []) == 2
    err = capfd.readouterr().err
    assert error_lines(err) == ["error: rank 1 died (killed by signal SIGKILL); the other ranks stopped"], err
    assert time.monotonic() - t0 < 60, "the dead peer was found at once, not after the 60 s group timeout"


HUNG = (
    "error: rank {} stopped answering: the other ranks' collectives failed or timed out waiting for it "
    "(engine.timeout_s); the ranks were stopped"
)


def test_dead_rank_line_names_a_killed_or_hung_rank_and_stays_quiet_after_rank_0s_line() -> None:
    assert dead_rank_line([2, -9]) == "error: rank 1 died (killed by signal SIGKILL); the other ranks stopped"
    assert dead_rank_line([PEER_GONE, None]) == HUNG.format(1)  # rank 0 timed out waiting for rank 1
    assert dead_rank_line([None, 2]) == HUNG.format(0)  # rank 0 hung: rank 1 timed out, silently
    assert dead_rank_line([2, None]) is None  # rank 0 printed the run's error line; rank 1 was stopped
    assert dead_rank_line([0, 0]) is None


def _freeze(cfg: dict, run_dir: str, roots: list[str]) -> None:
    """Rank 1 stops (SIGSTOP: alive, silent, its sockets open: a hung peer, as a dead NCCL peer looks) while
    rank 0 waits in an all-reduce; the group's timeout is ``cfg['timeout_s']``."""
    init_distributed(EngineOptions(backend="gloo", device="cpu", timeout_s=cfg["timeout_s"]))
    t = torch.ones(1)
    dist.all_reduce(t)
    if dist.get_rank() == 1:
        os.kill(os.getpid(), signal.SIGSTOP)
    dist.all_reduce(t)


@pytest.mark.slow
def test_a_hung_rank_is_named_after_the_group_timeout_not_waited_for(capfd: pytest.CaptureFixture) -> None:
    """The gloo twin of NCCL's watchdog path: a silent peer fails rank 0's collective at ``timeout_s``, the
    run exits non-zero naming that rank, and the spawner ends it (within timeout + grace, not a hang)."""
    t0 = time.monotonic()
    assert launch_local(_freeze, 2, {"timeout_s": 5}, ".", []) == 2
    elapsed = time.monotonic() - t0
    lines = error_lines(capfd.readouterr().err)
    assert lines == [HUNG.format(1)], lines
    assert 5 <= elapsed < 5 + GRACE_S + 45, elapsed


FORCED_MISMATCH = """
import sys
import moe.engine.measure as m
ref = m.reference_forward
m.reference_forward = lambda *a, **k: ref(*a, **k) + 1.0  # the reference now differs by 1 everywhere
from runners.serve import main, hydra_cli
sys.argv = ["serve", *sys.argv[1:]]
hydra_cli(main)
"""


def test_a_failed_reference_check_fails_the_run(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", FORCED_MISMATCH, "engine.nproc=1", "engine.check_reference=true",
         "engine.measure_iters=1", "engine.warmup_iters=0", "engine.batch_tokens=256", "trace.tokens=2048",
         f"hydra.run.dir={tmp_path}"], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and "differs from the single-process reference by 1" in lines[0], proc.stderr[
        -2000:
    ]
    assert not (tmp_path / "result.json").exists()
    assert '"status": "failed"' in (tmp_path / "events.jsonl").read_text().splitlines()[-1]


def test_non_moe_model_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'linear' is not an MoE model"):
        model_spec({"model": {"_target_": "fedgeo.models.Linear", "name": "linear"}})
    conf = tmp_path / "conf"
    (conf / "model").mkdir(parents=True)
    (conf / "model" / "linear.yaml").write_text("_target_: fedgeo.models.LinearOptions\nname: linear\n")
    (conf / "model" / "mixtral_tiny.yaml").write_text((CONF_DIR / "model" / "mixtral_tiny.yaml").read_text())
    with pytest.raises(SystemExit) as exc:
        check_model_override(["model=linear"], str(conf))
    assert exc.value.code == 2
    check_model_override(["model=mixtral_tiny"], str(conf))
    assert moe_model_options() == ["deepseek_v2_lite_shape", "mixtral_8x7b_shape", "mixtral_tiny"]


@pytest.mark.slow
def test_calibrate_on_cpu_writes_an_override_that_topologies_load(tmp_path: Path) -> None:
    proc = serve("mode=calibrate", "calibrate.token_counts=[1,8,64,256]", "calibrate.repeats=3",
                 "calibrate.device=auto", f"hydra.run.dir={tmp_path}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    if "cuda" not in proc.stderr.lower():
        assert "measuring on this CPU" in proc.stderr
    m = json.loads((tmp_path / "result.json").read_text())["metrics"]
    assert m["calib_per_token_s"] > 0 and m["calib_time_per_token_s"] >= m["calib_per_token_s"]
    topo = topology_from_config({"name": "x", "compute_file": str(tmp_path / "compute.yaml")})
    assert topo.compute.time_per_token_s == pytest.approx(m["calib_time_per_token_s"])
    with pytest.raises(ConfigError, match="topology.compute_file"):
        topology_from_config({"name": "x", "compute_file": str(tmp_path / "missing.yaml")})


@pytest.mark.slow
def test_a_served_run_takes_the_traces_model_shape(tmp_path: Path) -> None:
    """``mode=serve`` (2 spawned ranks) with the DeepSeek-V2-Lite preset and no model named: its shape
    (64 experts, top-6, at CPU widths through ``model.<field>``), labelled ``model_from``."""
    proc = serve("engine.nproc=2", "trace.preset=deepseek_v2_lite", "trace.tokens=2048", "model.hidden_size=32",
                 "model.ffn_size=32", "model.shared_ffn_size=32", "model.num_heads=4", "engine.batch_tokens=256",
                 "engine.measure_iters=1", "engine.warmup_iters=0", "engine.check_reference=true",
                 f"hydra.run.dir={tmp_path}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    rec = json.loads((tmp_path / "result.json").read_text())
    assert (rec["config"]["model"]["num_experts"], rec["config"]["model"]["top_k"]) == (64, 6)
    assert rec["labels"]["model_from"] == "preset:deepseek_v2_lite_shape"
    assert rec["metrics"]["reference_ok"] == 1


@pytest.mark.parametrize(("named", "model", "hidden"), [([], "deepseek_v2_lite_shape", 2048),
                                                       (["model=mixtral_tiny"], "mixtral_tiny", 64)])  # fmt: skip
def test_calibrate_times_the_expert_of_the_traces_model_unless_one_is_named(
    tmp_path: Path, named: list[str], model: str, hidden: int
) -> None:
    proc = serve("mode=calibrate", "trace.preset=deepseek_v2_lite", "calibrate.token_counts=[1,2]",
                 "calibrate.repeats=1", "calibrate.device=cpu", *named, f"hydra.run.dir={tmp_path}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    cal = yaml.safe_load((tmp_path / "compute.yaml").read_text())["calibration"]
    assert (cal["model"], cal["hidden_size"]) == (model, hidden)
    config = json.loads((tmp_path / "result.json").read_text())["config"]
    assert config["model_from"] == ("named" if named else "preset:deepseek_v2_lite_shape")


@pytest.mark.slow
def test_serve_placements_preset_records_the_comparison(tmp_path: Path) -> None:
    proc = serve("experiment=serve_placements", "engine.measure_iters=2",
                 "compare.placements.moetuner.time_limit_s=5", "compare.candidates.moetuner_plus.time_limit_s=5",
                 "compare.candidates.moetuner_replicas.time_limit_s=5",
                 f"hydra.run.dir={tmp_path}", timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = json.loads((tmp_path / "result.json").read_text())
    m = rec["metrics"]
    assert 0.0 <= m["model_rank_agreement"] <= 1.0 and m["placements_compared"] == 4
    for label in ("contiguous", "eplb", "moetuner"):
        assert m[f"{label}_dispatch_matches_cost_model"] == 1
        assert m[f"{label}_max_abs_err_vs_reference"] < 1e-4
        assert m[f"{label}_step_time_s"] > 0
    assert any(k.startswith("best_") and k.endswith("_step_time_s") for k in m)
    assert m["contiguous_layer_time_tail_reduction"] == 0.0
    assert (tmp_path / "serve_placements.md").is_file()


@pytest.mark.slow
def test_gpu_smoke_script_runs_its_checks_on_cpu(tmp_path: Path) -> None:
    env = {**ENV, "SMOKE_DEVICE": "cpu", "SMOKE_OUT": str(tmp_path), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_smoke.sh")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("PASS", "FAIL"))]
    names = [ln.split()[1].rstrip(":") for ln in lines]
    assert names == ["calibrate", "ws1_fp32", "ws1_bf16", "deepseek_v2_lite", "one_device_4ranks_eplb",
                     "two_batch_overlap"], proc.stdout  # fmt: skip
    assert all(ln.startswith("PASS") for ln in lines)
    assert "dtype=bfloat16" in lines[2] and "4 ranks on 1 node(s)" in lines[4]
