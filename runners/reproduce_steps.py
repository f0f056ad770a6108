"""The steps of ``python -m runners.reproduce``: which sweeps make which table (see README, "Reproduce")."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fedgeo.report import fed_comparison_table
from moe.report import moe_comparison_table

Report = Callable[[list[dict], Path], list[Path]]


@dataclass
class Step:
    """One reproduced table: a multirun of a preset, then its tables."""

    name: str
    runner: str  # module, e.g. runners.moe
    sweeps: list[
        list[str]
    ]  # one multirun per entry (its overrides, e.g. ["experiment=moetuner_single_node"])
    by: list[str]  # group-by keys of the generic table
    metrics: list[str]
    quick: list[str] = field(default_factory=list)  # extra overrides in quick mode
    full: list[str] = field(default_factory=list)
    report: Report | None = None  # paper comparison, from record dicts


MOE_METRICS = [
    "balancedness_mean", "cross_gpu_tokens", "cross_node_tokens", "layer_time_tail_s",
    "speedup_vs_contiguous", "solve_time_s", "gap",
]  # fmt: skip
# Full mode: the whole trace, each placement's own solver budget, paper-like batches, five seeds.
MOE_FULL = [
    "trace.max_tokens=null",
    "placement_time_limit_s=null",
    "eval.batch_tokens=8192",
    "seed=0,1,2,3,4",
]

BENCHMARK_MODULES = [
    "benchmarks.trace_stats",
    "benchmarks.cost_model",
    "benchmarks.ggeur",
    "benchmarks.moetuner_solve",
    "benchmarks.fl",
]


STEPS: list[Step] = [
    Step(
        name="moe_trace_stats",
        runner="runners.moe",
        sweeps=[["mode=stats", "trace=deepseek_v2_lite"], ["experiment=moetuner_trace_stats"]],
        by=["trace.name", "trace.preset"],
        metrics=["imbalance_max_over_mean", "affinity_mean"],
    ),
    Step(
        name="moe_single_node",
        runner="runners.moe",
        sweeps=[["experiment=moetuner_single_node"]],
        by=["trace.name", "placement.label"],
        metrics=MOE_METRICS,
        full=MOE_FULL,
        report=moe_comparison_table,
    ),
    Step(
        name="moe_multi_node",
        runner="runners.moe",
        sweeps=[["experiment=moetuner_multi_node"]],
        by=["trace.name", "placement.label"],
        metrics=MOE_METRICS,
        full=MOE_FULL,
        report=moe_comparison_table,
    ),
    Step(
        name="ggeur_label_skew",
        runner="runners.fed",
        sweeps=[["experiment=ggeur_local_label_skew", "mode=local"]],
        by=["dataset.name", "partition.beta", "augment.kind"],
        metrics=["acc_local_mean", "acc_local_min", "acc_local_max"],
        full=["ggeur_target=2000"],
        report=fed_comparison_table,
    ),
    Step(
        name="ggeur_domain_skew",
        runner="runners.fed",
        sweeps=[["experiment=ggeur_local_domain_skew", "mode=local"]],
        by=["dataset.name", "augment.kind"],
        metrics=["acc_local_mean", "acc_local_domain_avg"],
        full=["ggeur_target=500", "ggeur_per_prototype=500"],
        report=fed_comparison_table,
    ),
    Step(
        name="ggeur_fl_label_skew",
        runner="runners.fed",
        sweeps=[["experiment=ggeur_label_skew"]],
        by=["dataset.name", "partition.beta", "strategy.name", "augment.kind"],
        metrics=["acc_best", "acc_final", "acc_domain_avg_final"],
        quick=["fl.rounds=5", "strategy=fedavg,fedprox", "seed=0,1"],
        report=fed_comparison_table,
    ),
    Step(
        name="ggeur_fl_domain_skew",
        runner="runners.fed",
        # GGEUR (+ the multi-domain prototype step, the default here) and none; then GGEUR without that step
        sweeps=[
            ["experiment=ggeur_domain_skew"],
            ["experiment=ggeur_domain_skew", "augment=ggeur", "augment.multi_domain=false"],
        ],
        by=["dataset.name", "strategy.name", "augment.kind", "augment.multi_domain"],
        metrics=["acc_best", "acc_final", "acc_domain_avg_final"],
        quick=["fl.rounds=5", "strategy=fedavg,fedprox", "seed=0,1"],
        report=fed_comparison_table,
    ),
]
