"""``python -m runners.moe mode=place trace=... placement=... topology=... +eval=default``.

Profile on one part of the trace, place, evaluate on the other part with the cost model, and record every
metric next to the contiguous placement (Megatron's default, the paper's baseline) made and evaluated in the
same run. Config nodes used: ``trace`` (``runners.moe_inputs.load_traces``), ``placement`` (``name`` plus that
algorithm's options), ``topology`` (``moe.topology.topology_from_config``), ``eval`` (optional,
``moe.cost_model.eval_options_from_config``).

Artifacts: ``placement.json`` (the placement, with the serving engines' ``physical_to_logical_map``),
``contiguous.json`` and ``costs.npz`` (every per-layer array of both cost reports; the baseline's prefixed
``contiguous_``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from common.atomic import atomic_savez
from common.errors import ConfigError, InputError
from common.experiment import RunContext, RunOutput
from common.log import get_logger
from moe.bound import fraction_of_bound, max_slots
from moe.cost_model import CostReport, EvalOptions, eval_options_from_config, evaluate_placement
from moe.placement.base import Placement
from moe.placement.placer import PlacementProblem, Placer, build_placer
from moe.placement.profiled import ProfiledProblem
from moe.placement.simple import Contiguous
from moe.topology import Topology, topology_from_config
from moe.trace import Trace
from moe.trace_source import trace_source

# Metrics compared with the baseline: ``<name>_vs_contiguous`` = this / contiguous, and for the paper's
# comparisons ``<stem>_reduction`` = 1 - this / contiguous.
RATIO_METRICS = (
    "token_time_tail_s",
    "token_time_mean_s",
    "a2a_time_tail_s",
    "a2a_time_mean_s",
    "layer_time_tail_s",
    "layer_time_mean_s",
    "cross_gpu_tokens",
    "cross_node_tokens",
)
REDUCTION_METRICS = (
    "token_time_tail_s",
    "token_time_mean_s",
    "a2a_time_tail_s",
    "a2a_time_mean_s",
    "layer_time_tail_s",
)


def place_and_time(placer: Placer, problem: PlacementProblem) -> tuple[Placement, float]:
    """Run one placement algorithm; returns it and its wall-clock seconds."""
    t0 = time.perf_counter()
    placement = placer.place(problem)
    return placement, time.perf_counter() - t0


def compare(report: CostReport, baseline: CostReport) -> dict[str, float]:
    """The placement's metrics plus ``contiguous_*`` values, ratios, reductions and the speedup."""
    mine, base = report.summary(), baseline.summary()
    out = dict(mine)
    for name in RATIO_METRICS:
        out[f"contiguous_{name}"] = base[name]
        out[f"{name}_vs_contiguous"] = mine[name] / base[name] if base[name] else float("nan")
    for name in REDUCTION_METRICS:
        out[f"{name.removesuffix('_s')}_reduction"] = 1.0 - out[f"{name}_vs_contiguous"]
    out["contiguous_balancedness_mean"] = base["balancedness_mean"]
    lt = mine["layer_time_tail_s"]
    out["speedup_vs_contiguous"] = base["layer_time_tail_s"] / lt if lt else float("nan")
    return out


def placement_metrics(placement: Placement, wall_s: float) -> dict[str, float]:
    """``solve_time_s`` (the algorithm's own, else wall clock), ``place_time_s``, and ``gap`` when reported."""
    info = placement.info or {}
    out = {"place_time_s": wall_s}
    solve = info.get("solve_time_s")
    out["solve_time_s"] = float(solve) if _is_number(solve) else wall_s
    if _is_number(info.get("gap")):
        out["gap"] = float(info["gap"])
    for key in ("objective", "bound"):
        if _is_number(info.get(key)):
            out[f"placement_{key}"] = float(info[key])
    return out


def status_metrics(placement: Placement) -> dict[str, float]:
    """``status_<status>: 1.0`` for a solver placement's ``info['status']`` (optimal, feasible, time_limit,
    heuristic, ...); the mean over seeds in a table is the share of seeds that ended so. Empty otherwise."""
    status = (placement.info or {}).get("status")
    return {f"status_{status}": 1.0} if isinstance(status, str) and status else {}


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float | np.number) and not isinstance(x, bool)


def run(ctx: RunContext) -> RunOutput:
    """Profile, place, evaluate, compare with contiguous; see the module docstring."""
    cfg = ctx.config
    if "trace" not in cfg:
        raise ConfigError("trace", "missing; choose one, e.g. trace=deepseek_v2_lite")
    source = trace_source(cfg["trace"])
    topology = source.topology_for(topology_from_config(cfg.get("topology")))
    options = eval_options_from_config(cfg.get("eval"))
    placer = build_placer(cfg.get("placement"))
    profile, evaluation = source.profile_and_evaluation(ctx.seed)
    problem = profiled_problem(profile, evaluation, topology, options, ctx.seed)

    placement, wall = place_and_time(placer, problem)
    ctx.log.info(f"placement {placer.table_label}: {wall:.3f} s; info {_short_info(placement.info)}")
    ctx.logger.event("placement", name=placer.table_label, wall_s=wall, status=placement.info.get("status"))
    baseline = placement if isinstance(placer, Contiguous) else Contiguous().place(problem)
    slot_order = evaluation.slot_order or "unordered"
    report = evaluate_placement(evaluation.experts, placement, topology, options, True, slot_order)
    base_report = (
        report
        if baseline is placement
        else evaluate_placement(evaluation.experts, baseline, topology, options, slot_order=slot_order)
    )
    save_artifacts(ctx, placement, baseline, report, base_report)

    metrics = compare(report, base_report)
    metrics.update(placement_metrics(placement, wall))
    metrics.update(fraction_of_bound(report, evaluation.top_k, topology, max_slots(placement, baseline)))
    metrics.update(status_metrics(placement))
    metrics["profile_tokens"] = float(profile.num_tokens)
    series = report.layer_series()
    series["contiguous_layer_time_tail_s"] = base_report.layer_series()["layer_time_tail_s"]
    series["contiguous_cross_gpu_tokens"] = base_report.layer_series()["cross_gpu_tokens"]
    status = (placement.info or {}).get("status")
    labels = {"status": status} if isinstance(status, str) and status else {}
    return RunOutput(metrics=metrics, series=series, series_step={k: "layer" for k in series}, labels=labels)


def profiled_problem(
    profile: Trace, evaluation: Trace, topology: Topology, options: EvalOptions, seed: int
) -> ProfiledProblem:
    """The placement problem of the profiling part (load ``P``, pairs ``R``, the trace itself for placements
    that search the cost model); refuses parts of different models."""
    if profile.num_experts != evaluation.num_experts or profile.num_layers != evaluation.num_layers:
        raise InputError(
            f"trace: profile part ({profile.num_layers} layers, {profile.num_experts} experts) and evaluation "
            f"part ({evaluation.num_layers} layers, {evaluation.num_experts} experts) differ"
        )
    e = profile.num_experts
    get_logger("run").info(
        f"profile {profile.num_tokens} tokens, evaluate {evaluation.num_tokens} tokens; {profile.num_layers} "
        f"layers, {e} experts, top-{profile.top_k}; topology {topology.name}: {topology.num_gpus} EP ranks "
        f"on {topology.num_nodes} node(s)"
    )
    slot_order = profile.slot_order or "unordered"
    return ProfiledProblem.from_trace(profile.experts, e, topology, options, slot_order, seed)


def save_artifacts(
    ctx: RunContext, placement: Placement, baseline: Placement, report: CostReport, base_report: CostReport
) -> None:
    """``placement.json``, ``contiguous.json`` and ``costs.npz`` (every per-layer array of both reports)."""
    placement.save(ctx.artifact("placement.json"))
    baseline.save(ctx.artifact("contiguous.json"))
    arrays = report.arrays()
    arrays.update({f"contiguous_{k}": v for k, v in base_report.arrays().items()})
    atomic_savez(ctx.artifact("costs.npz"), **arrays)


def _short_info(info: Mapping[str, Any]) -> str:
    keep = ("status", "objective", "bound", "gap", "solve_time_s", "notes")
    return ", ".join(f"{k}={info[k]}" for k in keep if k in info) or "-"
