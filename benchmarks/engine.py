"""Engine overhead and throughput: ``python -m benchmarks.engine [--nproc 4] [--iters 10] [--skip-placements]``.

First, side by side in one run (``benchmarks.engine_overhead``): the per-layer overhead of the MoE layer
beyond its all-to-alls and expert compute, for the legacy path (``engine.dispatch=legacy``, the first engine)
and the fast one, on two routing shapes (Mixtral's 8 experts top-2 and DeepSeek-V2-Lite's 64 experts top-6,
small widths); ``<shape>_overhead_ratio`` = fast / legacy overhead. Then it ``runners.serve experiment=serve_placements`` (contiguous, EPLB, MoETuner and the suite's best placement
on 4 gloo ranks on this CPU, tiny sizes) and records per placement the step time, dispatch / combine tails and
tokens/s. The baseline, measured in the same run: a single-process forward of the same layers on the same
batch (every expert in one process, no communication); ``overhead_vs_single_process`` = engine step time /
that forward's time. Writes a run record into ``results/bench/engine/`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from benchmarks.engine_overhead import PATHS, overhead_rank
from benchmarks.timing import best_time
from common.experiment import RunContext, RunOutput, run_experiment
from common.log import get_logger
from common.threads import limit_threads
from moe.engine.batches import BatchSource, slots_ranked
from moe.engine.model import reference_forward
from moe.engine.weights import dense_weights
from runners.hydra_entry import CONF_DIR, install, to_plain
from runners.moe_inputs import load_traces
from runners.serve_body import model_spec, trace_config
from runners.serve_launch import launch_local

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "results" / "bench" / "engine"
PLACEMENT_KEYS = (
    "step_time_s",
    "tokens_per_s",
    "a2a_time_tail_s",
    "layer_time_tail_s",
    "compute_time_tail_s",
)


def preset_config(overrides: list[str]) -> dict:
    """The resolved ``serve`` config of the preset (same composition as the runner)."""
    install()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("serve", overrides=["experiment=serve_placements", *overrides])
    return to_plain(cfg)  # the mode as its name, as the runner records it


def single_process_step_s(cfg: dict, repeats: int) -> float:
    """Best seconds of one forward of batch 0 through all layers in this process (every expert local)."""
    spec = model_spec(cfg)
    eng = cfg["engine"]
    _, evaluation = load_traces(trace_config(cfg, spec), int(cfg["seed"]))
    source = BatchSource(
        eng["batch_tokens"], 1, spec.hidden_size, int(cfg["seed"]),
        experts=evaluation.experts[:, : spec.num_layers], ranked=slots_ranked(evaluation),
    )  # fmt: skip
    batch = source.batch(0, 0)
    dev, dt = torch.device("cpu"), torch.float32
    dense = [dense_weights(int(cfg["seed"]), li, spec).to(dev, dt) for li in range(spec.num_layers)]
    cache: dict = {}
    return best_time(
        lambda: reference_forward(spec, dense, int(cfg["seed"]), batch, eng["seq_len"], dev, dt, cache),
        repeats,
    )


OVERHEAD_SHAPES = {  # routing shapes at CPU widths: the overhead grows with experts and top-k, not with H
    "mixtral": {"hidden_size": 64, "ffn_size": 128, "num_experts": 8, "top_k": 2, "num_layers": 2},
    "deepseek": {"hidden_size": 128, "ffn_size": 128, "num_experts": 64, "top_k": 6, "num_layers": 2},
}


def overhead_metrics(nproc: int, repeats: int, batch_tokens: int = 1024) -> dict[str, float]:
    """Legacy vs fast per-layer overhead (seconds, summed over layers) for each of ``OVERHEAD_SHAPES``."""
    out: dict[str, float] = {}
    print(f"{'shape':10s} {'path':7s} {'layer s':>10s} {'floor s':>10s} {'overhead s':>11s} {'seq floor s':>12s} "
          f"{'overhead s':>11s}  (summed over layers; floor: parts apart | in sequence)")  # fmt: skip
    for name, dims in OVERHEAD_SHAPES.items():
        with tempfile.TemporaryDirectory() as tmp:
            cfg = {"model": {"name": name, "num_heads": 4, **dims}, "batch_tokens": batch_tokens,
                   "repeats": repeats, "kernel": "auto"}  # fmt: skip
            if launch_local(overhead_rank, nproc, cfg, tmp, []) != 0:
                raise SystemExit("error: the overhead benchmark's ranks failed")
            res = json.loads((Path(tmp) / "overhead.json").read_text())
        for p in PATHS:
            for key, val in ((f"{p}_layer_s", res[p]), (f"{p}_floor_s", res[f"floor_{p}"]),
                             (f"{p}_overhead_s", res[f"{p}_overhead_s"]), (f"{p}_floor_seq_s", res[f"floor_seq_{p}"]),
                             (f"{p}_overhead_seq_s", res[f"{p}_overhead_seq_s"])):  # fmt: skip
                out[f"{name}_{key}"] = val
            print(f"{name:10s} {p:7s} {res[p]:10.5f} {res[f'floor_{p}']:10.5f} {res[f'{p}_overhead_s']:11.5f} "
                  f"{res[f'floor_seq_{p}']:12.5f} {res[f'{p}_overhead_seq_s']:11.5f}")  # fmt: skip
        for p in ("fast", "padded"):
            tag = "" if p == "fast" else "padded_"
            out[f"{name}_{tag}overhead_ratio"] = res[f"{p}_overhead_s"] / res["legacy_overhead_s"]
            out[f"{name}_{tag}overhead_seq_ratio"] = res[f"{p}_overhead_seq_s"] / res["legacy_overhead_seq_s"]
            print(f"{name}: {p} / legacy overhead = {out[f'{name}_{tag}overhead_ratio']:.3f} (floor in parts), "
                  f"{out[f'{name}_{tag}overhead_seq_ratio']:.3f} (floor in sequence); kernel {res['kernel']}")  # fmt: skip
    return out


def body(ctx: RunContext, overrides: list[str], repeats: int, nproc: int, placements: bool) -> RunOutput:
    log = get_logger("bench")
    metrics = overhead_metrics(nproc, max(repeats, 5) * 4)
    if not placements:
        return RunOutput(metrics=metrics)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "runners.serve", "experiment=serve_placements", "engine.check_reference=false",
               f"hydra.run.dir={tmp}", *overrides]  # fmt: skip
        log.info(" ".join(cmd[1:]))
        proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "SUITE_PROGRESS": "0"}, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"error: runners.serve failed with status {proc.returncode}")
        served = json.loads((Path(tmp) / "result.json").read_text())["metrics"]
    single = single_process_step_s(preset_config(overrides), repeats)
    labels = sorted({k.removesuffix("_step_time_s") for k in served if k.endswith("_step_time_s")})
    metrics["single_process_step_s"] = single
    metrics["model_rank_agreement"] = served["model_rank_agreement"]
    print(f"{'placement':28s} {'step s':>9s} {'tokens/s':>10s} {'a2a tail s':>11s} {'overhead':>9s}")
    for lb in labels:
        for key in PLACEMENT_KEYS:
            metrics[f"{lb}_{key}"] = served[f"{lb}_{key}"]
        metrics[f"{lb}_overhead_vs_single_process"] = served[f"{lb}_step_time_s"] / single
        print(f"{lb:28s} {served[f'{lb}_step_time_s']:9.4f} {served[f'{lb}_tokens_per_s']:10.0f} "
              f"{served[f'{lb}_a2a_time_tail_s']:11.4f} {metrics[f'{lb}_overhead_vs_single_process']:9.2f}")  # fmt: skip
    print(f"single-process forward of the same batch: {single:.4f} s")
    return RunOutput(metrics=metrics)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nproc", type=int, default=4, help="gloo ranks")
    ap.add_argument("--iters", type=int, default=10, help="measured iterations per placement")
    ap.add_argument(
        "--repeats", type=int, default=5, help="repeats of the single-process forward (best kept)"
    )
    ap.add_argument("--out", type=Path, default=OUT, help="run folder for result.json")
    ap.add_argument("--skip-placements", action="store_true", help="only the legacy vs fast overhead")
    args = ap.parse_args(argv)
    limit_threads()
    overrides = [f"engine.nproc={args.nproc}", f"engine.measure_iters={args.iters}"]
    config = {"benchmark": "engine", "overrides": overrides, "repeats": args.repeats, "seed": 0,
              "nproc": args.nproc, "placements": not args.skip_placements}  # fmt: skip
    run_experiment(
        config, "serve", lambda ctx: body(ctx, overrides, args.repeats, args.nproc, not args.skip_placements),
        run_dir=args.out,
    )  # fmt: skip


if __name__ == "__main__":
    main()
