"""MoETuner+ with cluster-level moves across nodes and within-node NIC balancing against ExFlow and the other
placements, with the cross-node lower bound: ``python -m benchmarks.cross_node [--seeds 0,1,2,3,4,5] [--cap 10]``.

Setting of ``experiment=moetuner_multi_node`` (``topology=paper_multi_node``: 2 nodes, 4 EP ranks; first
60k tokens, batches of 2048; every placement given ``--cap`` seconds as the preset's ``placement.time_limit_s``), on
the shared real DeepSeek-V2-Lite trace (the synthetic Mixtral-8x7B trace when it is absent). Per seed, every
placement of the experiment and three steps of MoETuner+ are placed on the profile part and replayed on the
evaluation part: ``moetuner_plus_search`` (candidates and the local search only: ``cross_node_sweeps=0
node_balance_sweeps=0``), ``moetuner_plus_x`` (plus the cluster moves across nodes) and ``moetuner_plus`` (the
defaults: plus the within-node NIC balancing), and ``moetuner_plus_tokensN``: the defaults with
``search_tokens=N`` for each N of ``--search-tokens`` (how much the lead depends on the search's sample). Recorded: layer times, each step over the best other
placement and over ExFlow, and the bounds (``moe.bound``, ``moe.bound_cross_node`` for ``E / G`` experts per
GPU and for MoETuner+'s memory). Writes ``results/bench/cross_node/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path

from benchmarks.cli import float_in, int_list, run
from benchmarks.placement_compare import _configs
from common.config import build
from common.experiment import RunContext, RunOutput
from common.log import get_logger
from common.threads import limit_threads
from moe.bound import fraction_of_bound, max_slots
from moe.bound_cross_node import cross_node_bound
from moe.cost_model import evaluate_placement
from moe.placement.profiled import ProfiledProblem
from moe.topology import topology_from_config
from moe.trace_source import trace_source

REPO = Path(__file__).resolve().parent.parent
REAL_TRACE = REPO / ".." / "shared" / "data" / "moe" / "deepseek_v2_lite_prefill.npz"
OUT = REPO / "results" / "bench" / "cross_node"
OTHERS = "contiguous,round_robin,random,greedy,eplb,exflow,moetuner,moetuner_replicas,grace"
STEPS = {  # MoETuner+ step by step: name -> (cross_node_sweeps, node_balance_sweeps)
    "moetuner_plus_search": (0, 0),
    "moetuner_plus_x": (1, 0),
    "moetuner_plus": (1, 1),
}
NEW = "moetuner_plus"


def _problem(trace: str, seed: int):  # noqa: ANN202 - (problem, evaluation trace, topology, options, configs)
    cfg, pcfgs = _configs(trace, "paper_multi_node", seed, [*OTHERS.split(","), "moetuner_plus"], [])
    src = trace_source(cfg["trace"])
    topo = src.topology_for(topology_from_config(cfg["topology"]))
    opts = build(cfg["eval"], "eval")
    prof, ev = src.profile_and_evaluation(seed)
    order = ev.slot_order or "unordered"
    problem = ProfiledProblem.from_trace(prof.experts, prof.num_experts, topo, opts, order, seed)
    return problem, ev, topo, opts, pcfgs


def _one_seed(trace: str, seed: int, cap: float, tokens: list[int]) -> dict[str, float]:
    """Every placement of one seed: layer time (ms), place seconds, bounds; see the module docstring."""
    problem, ev, topo, opts, pcfgs = _problem(trace, seed)
    placers = {
        name: dataclasses.replace(build(pcfgs[name], "placement"), time_limit_s=cap)
        for name in [*OTHERS.split(","), "moetuner_plus"]
    }
    for name, (cross, balance) in STEPS.items():
        placers[name] = dataclasses.replace(
            placers["moetuner_plus"], cross_node_sweeps=cross, node_balance_sweeps=balance
        )
    for n in tokens:
        placers[f"{NEW}_tokens{n}"] = dataclasses.replace(placers[NEW], search_tokens=n)
    out: dict[str, float] = {}
    order = ev.slot_order or "unordered"
    for name, placer in placers.items():
        t0 = time.perf_counter()
        pl = placer.place(problem)
        out[f"{name}_place_s"] = time.perf_counter() - t0
        if name.startswith(NEW):  # 1 when the search stopped at its cap (the placement then depends on speed)
            out[f"{name}_time_limit"] = float(pl.info["status"] == "time_limit")
        report = evaluate_placement(ev.experts, pl, topo, opts, slot_order=order)
        out[f"{name}_layer_time_ms"] = report.summary()["layer_time_tail_s"] * 1e3
        if name in (NEW, "exflow"):
            slots = max_slots(pl)
            out[f"{name}_slots"] = float(slots)
            out["bound_old_ms"] = fraction_of_bound(report, ev.top_k, topo, slots)["bound_layer_time_s"] * 1e3
            b = cross_node_bound(ev.experts, ev.num_experts, topo, slots, report.batch_tokens)
            out[f"bound_cross_{slots}_ms"] = b.total_s * 1e3
            out[f"split_fraction_lb_{slots}"] = float(b.split_tokens.mean() / report.batch_tokens)
    best_other = min(out[f"{name}_layer_time_ms"] for name in OTHERS.split(","))
    for name in [*STEPS, *(f"{NEW}_tokens{n}" for n in tokens)]:
        out[f"{name}_over_best_other"] = best_other / out[f"{name}_layer_time_ms"]
        out[f"{name}_over_exflow"] = out["exflow_layer_time_ms"] / out[f"{name}_layer_time_ms"]
    return out


def body(ctx: RunContext, seeds: list[int], cap: float, tokens: list[int]) -> RunOutput:
    log = get_logger("bench")
    trace = "deepseek_v2_lite"
    if not REAL_TRACE.exists():
        log.warning(f"real trace not found at {REAL_TRACE}: synthetic Mixtral-8x7B trace instead")
        trace = "synthetic"
    metrics: dict[str, float] = {}
    for seed in seeds:
        m = _one_seed(trace, seed, cap, tokens)
        metrics.update({f"seed{seed}_{k}": v for k, v in m.items()})
        times = {k[: -len("_layer_time_ms")]: v for k, v in m.items() if k.endswith("_layer_time_ms")}
        for name, v in sorted(times.items(), key=lambda kv: kv[1]):
            print(f"seed {seed} {name:18s} {v:7.4f} ms  speedup vs contiguous {times['contiguous'] / v:6.3f}")
        print(f"seed {seed}: {NEW} / best other {m[f'{NEW}_over_best_other']:.4f}, / exflow {m[f'{NEW}_over_exflow']:.4f}; "
              f"bounds: old {m['bound_old_ms']:.4f} ms, cross-node " + ", ".join(
                  f"{k[len('bound_cross_'):-3]} slots {v:.4f} ms" for k, v in m.items() if k.startswith("bound_cross_")))  # fmt: skip
    won = sum(metrics[f"seed{s}_{NEW}_over_best_other"] > 1.0 for s in seeds)
    metrics["seeds_won_vs_best_other"] = float(won)
    for name in [NEW, *(f"{NEW}_tokens{n}" for n in tokens)]:
        key = "seeds_at_1.05_vs_best_other" + name[len(NEW) :]
        metrics[key] = float(sum(metrics[f"seed{s}_{name}_over_best_other"] >= 1.05 for s in seeds))
    return RunOutput(metrics=metrics, labels={"trace": trace, "topology": "paper_multi_node"})


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--seeds",
        type=int_list(0, "seed"),
        default="0,1,2,3,4,5",
        help="comma-separated seeds (profile / evaluation splits)",
    )
    ap.add_argument(
        "--cap",
        type=float_in(0.0, open_lo=True),
        default=10.0,
        help="placement.time_limit_s of every placement",
    )
    ap.add_argument(
        "--search-tokens", type=int_list(1), default="16384",
        help="comma-separated placement.search_tokens values tried besides the default (steps moetuner_plus_tokensN)",
    )  # fmt: skip
    ap.add_argument("--out", type=Path, default=OUT, help="run folder for result.json")
    args = ap.parse_args(argv)
    limit_threads()
    seeds, tokens = args.seeds, args.search_tokens
    config = {
        "benchmark": "cross_node",
        "seeds": ",".join(map(str, seeds)),
        "cap": args.cap,
        "seed": seeds[0],
        "search_tokens": ",".join(map(str, tokens)),
    }
    os.environ.setdefault("SUITE_PROGRESS", "0")
    run(ap, config, lambda ctx: body(ctx, seeds, args.cap, tokens), args.out)


if __name__ == "__main__":
    main()
