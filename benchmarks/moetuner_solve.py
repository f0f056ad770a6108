"""MoETuner solve time and gap: ``python -m benchmarks.moetuner_solve [--time-limit S] [--cases ...]``.

Cases (experts, layers, GPUs): (8, 32, 4) Mixtral shape, (64, 26, 8) the real DeepSeek-V2-Lite trace (a
synthetic one of that shape when the file is absent), (128, 94, 8) Qwen3-235B shape, (256, 58, 32)
DeepSeek-V3 shape on 4 nodes of 8. Each case runs the paper's solve (``stage2_bound: pairwise``,
``stage1_enumerate: 0``) with CBC and with HiGHS under the same budget; every row
reports stage 1 and stage 2 solve time and proven gap, the stage 2 method (joint ILP or the decomposition),
and MoETuner against contiguous placement measured in the same run (sum of per-boundary slowest links, mean
balancedness). Extra rows measure the beyond-paper variants: joint ILP against the decomposition on the
small case, hot-expert replicas on the small and the largest case, and ``highs_tight`` (``stage2_bound:
tight``: node-threshold bounds, the chain search for few GPUs, node symmetry breaking; with
``stage1_enumerate: 65536``, which solves stage 1 exactly on the Mixtral shape; MoETuner's defaults) on
every case.
``--rows`` picks which of these groups run (``paper``, ``extra``, ``tight``). Writes a run record into
``results/bench/moetuner_solve/`` (or ``--out``) and prints a table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from common.experiment import RunContext, RunOutput, run_experiment
from common.log import get_logger
from moe.placement.evaluate import balancedness, slowest_link
from moe.placement.moetuner import MoETuner, moetuner
from moe.placement.simple import contiguous
from moe.stats import cross_layer_counts, expert_load
from moe.synthetic import generate_trace

REPO = Path(__file__).resolve().parent.parent
REAL_TRACE = REPO / ".." / "shared" / "data" / "moe" / "deepseek_v2_lite_prefill.npz"
OUT = REPO / "results" / "bench" / "moetuner_solve"

# name -> (synthetic preset, experts, layers, GPUs, GPUs per node)
CASES = {
    "e8_l32_g4": ("mixtral_8x7b", 8, 32, 4, 4),
    "e64_l26_g8": ("deepseek_v2_lite", 64, 26, 8, 8),
    "e128_l94_g8": ("qwen3_235b", 128, 94, 8, 8),
    "e256_l58_g32": ("deepseek_v3", 256, 58, 32, 8),
}
NVLINK_GBPS, NETWORK_GBPS = 900.0, 100.0  # the paper's H100 NVLink and 800 Gb/s network


def bandwidth(num_gpus: int, gpus_per_node: int) -> np.ndarray:
    """``[G, G]`` GB/s: NVLink inside a node, the network across nodes."""
    node = np.arange(num_gpus) // gpus_per_node
    b = np.where(node[:, None] == node[None, :], NVLINK_GBPS, NETWORK_GBPS)
    np.fill_diagonal(b, 0.0)
    return b


def inputs(case: str, tokens: int, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """``P``, ``R`` and where they came from."""
    preset, e, _, _, _ = CASES[case]
    if case == "e64_l26_g8" and REAL_TRACE.exists():
        with np.load(REAL_TRACE) as d:
            ex = d["experts"][:tokens]
        source = "real deepseek_v2_lite_prefill"
    else:
        ex = generate_trace(preset, tokens, skew=1.0, affinity=0.5, seed=seed).experts
        source = f"synthetic {preset}"
    return expert_load(ex, e), cross_layer_counts(ex, e), source


ROWS = ("paper", "extra", "tight")
# The paper's solve (per-boundary stage 2 bounds, stage 1 by the ILP), which the rows ``highs``/``cbc`` and
# the ``extra`` rows measure; ``highs_tight`` is MoETuner's default.
PAPER = {"stage2_bound": "pairwise", "stage1_enumerate": 0}


def _runs(
    case: str, g: int, solvers: list[str], time_limit: float, groups: list[str]
) -> list[tuple[str, MoETuner]]:
    """``(row tag, options)`` of every MoETuner run of ``case`` (``g`` GPUs) in the chosen row ``groups``."""
    runs = [(s, MoETuner(solver=s, time_limit_s=time_limit, **PAPER)) for s in solvers if "paper" in groups]
    if "tight" in groups:  # beyond the paper: tighter stage 2 bounds, the chain search, node symmetry
        tight = MoETuner(
            solver="highs", time_limit_s=time_limit, stage2_bound="tight", stage1_enumerate=2**16
        )
        runs.append(("highs_tight", tight))
    if "extra" in groups and case == "e8_l32_g4":  # the decomposition against the joint ILP, same budget
        runs.append(("highs_decomposed", MoETuner(time_limit_s=time_limit, stage2="decomposed", **PAPER)))
    if "extra" in groups and case in ("e8_l32_g4", "e256_l58_g32"):  # hot-expert replicas, one per GPU
        runs.append(("highs_replicas", MoETuner(time_limit_s=time_limit, replicas=g, **PAPER)))
    return runs


def _values(pl, p, r, b, base_obj: float, base_bal: float) -> dict[str, float | None]:  # noqa: ANN001
    """One run's row: stage times and gaps, imbalance, objective and balancedness against contiguous."""
    i = pl.info
    s1, s2 = i["stage1"], i["stage2"]
    obj = float(slowest_link(pl, r, b).sum())
    return {
        "total_s": i["solve_time_s"],
        "stage1_solve_s": s1["solve_time_s"],
        "stage1_gap": s1["gap"],
        "stage1_imbalance_frac": s1["objective"] / float(p.sum()),
        "stage2_s": s2["wall_time_s"],
        "stage2_gap": s2["gap"],
        "objective_vs_contiguous": obj / base_obj if base_obj else float("nan"),
        "balancedness": float(balancedness(pl, p).mean()),
        "balancedness_contiguous": base_bal,
    }


def body(
    ctx: RunContext, cases: list[str], solvers: list[str], time_limit: float, tokens: int, groups: list[str]
) -> RunOutput:
    log = get_logger("bench")
    metrics: dict[str, float] = {}
    rows: list[tuple] = []
    for case in cases:
        _, e, num_layers, g, gpn = CASES[case]
        p, r, source = inputs(case, tokens, ctx.seed)
        b = bandwidth(g, gpn)
        base = contiguous(num_layers, e, g)
        base_obj, base_bal = float(slowest_link(base, r, b).sum()), float(balancedness(base, p).mean())
        log.info(f"{case}: {source}, E={e} L={num_layers} G={g}")
        for tag, opts in _runs(case, g, solvers, time_limit, groups):
            pl = moetuner(p, r, b, opts, seed=ctx.seed)
            vals, info = _values(pl, p, r, b, base_obj, base_bal), pl.info
            for k, v in vals.items():
                metrics[f"{case}/{tag}/{k}"] = float("nan") if v is None else float(v)
            met = info["memory"].get("met", True)
            metrics[f"{case}/{tag}/memory_met"] = float(met)
            rows.append((case, tag, info["stage2"]["method"], info["status"], vals, met))
            log.info(
                f"{case} {tag}: {info['status']}, {info['solve_time_s']:.1f} s, stage-2 gap {vals['stage2_gap']}"
            )
    _print_rows(rows)
    return RunOutput(metrics=metrics)


def _print_rows(rows: list[tuple]) -> None:
    """The table of ``rows`` (case, tag, stage 2 method, status, values, memory met) on stdout."""

    def f(x, spec: str) -> str:  # noqa: ANN001
        return "n/a" if x is None else format(x, spec)

    print(
        f"{'case':14s} {'run':18s} {'stage 2':10s} {'status':10s} {'total s':>8s} {'s1 s':>7s} {'s1 gap':>7s} "
        f"{'s1 imb%':>8s} {'s2 s':>7s} {'s2 gap':>7s} {'obj/contig':>10s} {'bal':>6s} {'bal contig':>10s} {'mem met':>7s}"
    )
    for case, tag, method, status, v, met in rows:
        print(
            f"{case:14s} {tag:18s} {method:10s} {status:10s} {v['total_s']:8.1f} {v['stage1_solve_s']:7.1f} "
            f"{f(v['stage1_gap'], '7.3f')} {100 * v['stage1_imbalance_frac']:8.4f} {v['stage2_s']:7.1f} "
            f"{f(v['stage2_gap'], '7.3f')} {v['objective_vs_contiguous']:10.3f} {v['balancedness']:6.3f} "
            f"{v['balancedness_contiguous']:10.3f} {str(met):>7s}"
        )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--time-limit", type=float, default=45.0, help="MoETuner budget per run (seconds)")
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--solvers", nargs="+", default=["cbc", "highs"], choices=["cbc", "highs"])
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS), help="row groups to run")
    ap.add_argument("--tokens", type=int, default=20000, help="profiled tokens per case")
    ap.add_argument("--out", type=Path, default=OUT, help="run folder for result.json")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    config = {
        "benchmark": "moetuner_solve",
        "time_limit_s": args.time_limit,
        "cases": args.cases,
        "solvers": args.solvers,
        "rows": args.rows,
        "tokens": args.tokens,
        "seed": args.seed,
        "bandwidth_gbps": {"nvlink": NVLINK_GBPS, "network": NETWORK_GBPS},
    }
    run_experiment(
        config,
        "moe",
        lambda ctx: body(ctx, args.cases, args.solvers, args.time_limit, args.tokens, args.rows),
        run_dir=args.out,
    )


if __name__ == "__main__":
    main()
