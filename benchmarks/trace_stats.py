"""Statistics throughput: token-layer choices per second on the real trace and a 1M-token synthetic trace.

``python -m benchmarks.trace_stats [--tokens N] [--repeats R]`` times ``expert_load``, ``cross_layer_counts``
and the whole ``trace_statistics`` (best of R), against a baseline measured in the same run: the one-shot
``cross_layer_counts`` that builds the full ``[tokens, layers-1, k, k]`` pair-code array before one
``bincount`` (the suite's first version). Writes ``results/bench/trace_stats/result.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from benchmarks.timing import best_time
from common.experiment import RunContext, RunOutput, run_experiment
from moe.stats import cross_layer_counts, expert_load, trace_statistics
from moe.synthetic import generate_trace
from moe.trace import Trace, load_trace

ROOT = Path(__file__).resolve().parent.parent
REAL = ROOT / ".." / "shared" / "data" / "moe" / "deepseek_v2_lite_prefill.npz"


def baseline_cross_layer_counts(experts: np.ndarray, num_experts: int) -> np.ndarray:
    """The reference: every pair code of every token and layer at once (int64), then one ``bincount``."""
    _, num_layers, _ = experts.shape
    e = num_experts
    ex = experts.astype(np.int64)
    layer = (np.arange(num_layers - 1, dtype=np.int64) * e * e)[None, :, None, None]
    flat = (layer + ex[:, :-1, :, None] * e + ex[:, 1:, None, :]).ravel()
    return np.bincount(flat, minlength=(num_layers - 1) * e * e).reshape(num_layers - 1, e, e)


def measure(name: str, trace: Trace, repeats: int) -> dict[str, float]:
    ex, e = trace.experts, trace.num_experts
    np.testing.assert_array_equal(cross_layer_counts(ex, e), baseline_cross_layer_counts(ex, e))
    choices = float(trace.num_choices)
    t_load = best_time(lambda: expert_load(ex, e), repeats)
    t_cross = best_time(lambda: cross_layer_counts(ex, e), repeats)
    t_base = best_time(lambda: baseline_cross_layer_counts(ex, e), repeats)
    t_all = best_time(lambda: trace_statistics(ex, e), repeats)
    return {
        f"{name}_choices": choices,
        f"{name}_load_choices_per_s": choices / t_load,
        f"{name}_cross_choices_per_s": choices / t_cross,
        f"{name}_baseline_cross_choices_per_s": choices / t_base,
        f"{name}_cross_speedup_vs_baseline": t_base / t_cross,
        f"{name}_all_stats_choices_per_s": choices / t_all,
        f"{name}_all_stats_s": t_all,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=1_000_000, help="synthetic Mixtral-8x7B tokens")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "results" / "bench" / "trace_stats"))
    args = ap.parse_args()
    config = {"seed": 0, "benchmark": "trace_stats", "tokens": args.tokens, "repeats": args.repeats}

    def body(ctx: RunContext) -> RunOutput:
        metrics: dict[str, float] = {}
        if REAL.is_file():
            metrics |= measure("real", load_trace(REAL), args.repeats)
        else:
            ctx.log.warning(f"real trace not found at {REAL}: measuring the synthetic trace only")
        t0 = time.perf_counter()
        syn = generate_trace("mixtral_8x7b", args.tokens, skew=0.5, affinity=0.8, seed=0)
        metrics["synthetic_generate_s"] = time.perf_counter() - t0
        metrics["synthetic_generate_tokens_per_s"] = args.tokens / metrics["synthetic_generate_s"]
        metrics |= measure("synthetic", syn, args.repeats)
        return RunOutput(metrics=metrics)

    rec = run_experiment(config, "moe", body, run_dir=args.out)
    m = rec.metrics
    table = Table(title="routing statistics throughput (million token-layer choices / s, best of repeats)")
    for col in (
        "trace",
        "choices (M)",
        "expert_load",
        "cross_layer",
        "baseline cross",
        "speedup",
        "all stats",
    ):
        table.add_column(col, justify="right")
    for name in ("real", "synthetic"):
        if f"{name}_choices" in m:
            table.add_row(
                name,
                f"{m[f'{name}_choices'] / 1e6:.1f}",
                f"{m[f'{name}_load_choices_per_s'] / 1e6:.0f}",
                f"{m[f'{name}_cross_choices_per_s'] / 1e6:.1f}",
                f"{m[f'{name}_baseline_cross_choices_per_s'] / 1e6:.1f}",
                f"{m[f'{name}_cross_speedup_vs_baseline']:.2f}x",
                f"{m[f'{name}_all_stats_choices_per_s'] / 1e6:.1f}",
            )
    console = Console()
    console.print(table)
    console.print(
        f"synthetic generation: {args.tokens} Mixtral-8x7B tokens in {m['synthetic_generate_s']:.2f} s; "
        f"record: {Path(args.out) / 'result.json'}"
    )


if __name__ == "__main__":
    main()
