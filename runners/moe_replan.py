"""``python -m runners.moe mode=replan trace.windows=N [trace.drift=r] replan.policy=... placement=...``.

Placement over time: the trace is cut into ``trace.windows`` windows in prompt order (with synthetic drift
``trace.drift``); the placement is made from scratch on every window but the last (the targets), and policy
``replan.policy`` (``moe.replan``) decides what serves each window ``1..N-1``. Every served window is replayed
through the cost model; each re-placement's migration (``moe.migration``) is amortised over
``replan.amortize_steps`` serving steps. ``static`` (place once) is evaluated in the same run as the baseline.
With ``replan.relabel`` (default) every target's GPUs are renumbered against the previous target
(``moe.relabel``: a node-preserving permutation, a symmetry of the cluster) before the policy runs.

Metrics: ``layer_time_tail_s`` (mean over served windows of the modelled MoE-layer tail per step),
``effective_layer_time_s`` (plus the amortised migration), ``static_layer_time_tail_s``,
``speedup_vs_static`` (static's / this effective time), ``migrated_experts``, ``migration_bytes`` and
``migration_s`` (sums over re-placements), ``place_time_s`` (mean wall time of a from-scratch placement),
``replan_time_s`` (mean wall time of an incremental step, gain model included). Series per served window.
Artifact: ``placements.json`` (the served placements' assignments).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from common.atomic import atomic_write_json
from common.errors import ConfigError
from common.experiment import RunContext, RunOutput
from moe.cost_model import EvalOptions, eval_options_from_config, evaluate_placement
from moe.migration import expert_weight_bytes, migration
from moe.placement.base import Placement
from moe.placement.placer import build_placer
from moe.placement.profiled import ProfiledProblem
from moe.relabel import relabel_chain
from moe.replan import incremental_step, plan
from moe.replan_gain import LayerGain
from moe.replan_options import ReplanOptions, replan_options
from moe.topology import Topology, topology_from_config
from moe.trace import Trace
from moe.trace_source import trace_source


def run(ctx: RunContext) -> RunOutput:
    """Targets per window, the policy's served placements, their modelled times and migrations."""
    cfg = ctx.config
    if "trace" not in cfg:
        raise ConfigError("trace", "missing; choose one, e.g. trace=deepseek_v2_lite")
    source = trace_source(cfg["trace"])
    opts = replan_options(cfg.get("replan"))
    topology = source.topology_for(topology_from_config(cfg.get("topology")))
    options = eval_options_from_config(cfg.get("eval"))
    placer = build_placer(cfg.get("placement"))
    expert_bytes = expert_weight_bytes(topology, opts.expert_bytes)
    windows = source.windowed(ctx.seed)
    slot_order = windows[0].slot_order or "unordered"

    targets, place_s = [], []
    for w in windows[:-1]:
        problem = ProfiledProblem.from_trace(
            w.experts, w.num_experts, topology, options, slot_order, ctx.seed
        )
        t0 = time.perf_counter()
        targets.append(placer.place(problem))
        place_s.append(time.perf_counter() - t0)
    if opts.relabel:
        targets = relabel_chain(targets, topology.ranks_per_node)
    served, replan_s = serve_plan(opts, targets, windows, topology, options, expert_bytes)
    ctx.log.info(f"replan {opts.policy} with {placer.table_label}: {len(served)} served windows")
    atomic_write_json(ctx.artifact("placements.json"), {"assignments": [p.assignment for p in served]})

    mine = window_costs(served, windows[1:], topology, options, expert_bytes)
    static = mine if opts.policy == "static" else window_costs(plan("static", targets), windows[1:], topology,
                                                               options, expert_bytes)  # fmt: skip
    metrics = summarise(mine, static, opts.amortize_steps)
    metrics.update(place_time_s=float(np.mean(place_s)), replan_time_s=float(np.mean(replan_s or [0.0])))
    metrics.update(expert_bytes=expert_bytes, windows=float(len(windows)))
    series = {k: list(map(float, v)) for k, v in mine.items()}
    series["static_layer_time_tail_s"] = list(map(float, static["layer_time_tail_s"]))
    budget = "unlimited" if opts.move_budget is None else str(opts.move_budget)
    labels = {"policy": opts.policy, "move_budget": budget if opts.policy == "incremental" else "-"}
    return RunOutput(metrics, series, {k: "window" for k in series}, labels)


def serve_plan(
    opts: ReplanOptions, targets: list[Placement], windows: list[Trace], topology: Topology,
    options: EvalOptions, expert_bytes: float,
) -> tuple[list[Placement], list[float]]:  # fmt: skip
    """The policy's placements for windows ``1..N-1`` and the wall seconds of each incremental step.

    The incremental gain model replays window ``k``'s first ``gain_tokens`` tokens; a step must save, per
    copy it adds, more than one copy's migration over the slowest path amortised over ``amortize_steps``.
    """
    if opts.policy != "incremental":
        return plan(opts.policy, targets), []
    slot_order = windows[0].slot_order or "unordered"
    off = ~np.eye(topology.num_gpus, dtype=bool)
    slowest = float(topology.bandwidth_bytes_per_s()[off].min()) if off.any() else float("inf")
    min_ratio = expert_bytes / slowest / opts.amortize_steps
    out, walls = [targets[0]], []
    for k in range(1, len(targets)):
        t0 = time.perf_counter()
        gain = None
        if opts.move_budget is not None:
            gain = LayerGain(windows[k].experts, out[-1], topology, options, slot_order, opts.gain_tokens)
        load = None if gain is None else gain.load
        out.append(incremental_step(out[-1], targets[k], opts.move_budget, gain, min_ratio, load))
        walls.append(time.perf_counter() - t0)
    return out, walls


def window_costs(
    served: list[Placement],
    windows: list[Trace],
    topology: Topology,
    options: EvalOptions,
    expert_bytes: float,
) -> dict[str, np.ndarray]:
    """Per served window: ``layer_time_tail_s`` and the migration into it (``migrated_experts``,
    ``migration_bytes``, ``migration_s``; zero for the first, which is the initial placement)."""
    out: dict[str, list[float]] = {k: [] for k in ("layer_time_tail_s", "migrated_experts", "migration_bytes",
                                                  "migration_s")}  # fmt: skip
    for i, (p, w) in enumerate(zip(served, windows, strict=True)):
        report = evaluate_placement(w.experts, p, topology, options, slot_order=w.slot_order or "unordered")
        out["layer_time_tail_s"].append(report.summary()["layer_time_tail_s"])
        mig = migration(served[i - 1], p, topology, expert_bytes) if i else None
        out["migrated_experts"].append(float(mig.num_copies) if mig else 0.0)
        out["migration_bytes"].append(mig.bytes if mig else 0.0)
        out["migration_s"].append(mig.seconds if mig else 0.0)
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


def summarise(mine: dict[str, np.ndarray], static: dict[str, np.ndarray], steps: int) -> dict[str, Any]:
    """Means over served windows (times) and sums over re-placements (moves); ``speedup_vs_static``."""
    eff = mine["layer_time_tail_s"] + mine["migration_s"] / steps
    static_eff = static["layer_time_tail_s"] + static["migration_s"] / steps
    return {
        "layer_time_tail_s": float(mine["layer_time_tail_s"].mean()),
        "effective_layer_time_s": float(eff.mean()),
        "static_layer_time_tail_s": float(static["layer_time_tail_s"].mean()),
        "speedup_vs_static": float(static_eff.mean() / eff.mean()),
        "migrated_experts": float(mine["migrated_experts"].sum()),
        "migration_bytes": float(mine["migration_bytes"].sum()),
        "migration_s": float(mine["migration_s"].sum()),
        "amortize_steps": float(steps),
    }
