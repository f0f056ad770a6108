"""The steps of ``python -m runners.reproduce``: which sweeps make which table (see README, "Reproduce")."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runners.reproduce import Step

Report = Callable[[list[dict], Path], list[Path]]

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
]


def steps(moe_report: Report, fed_report: Report) -> list[Step]:
    from runners.reproduce import Step

    return [
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
            report=moe_report,
        ),
        Step(
            name="moe_multi_node",
            runner="runners.moe",
            sweeps=[["experiment=moetuner_multi_node"]],
            by=["trace.name", "placement.label"],
            metrics=MOE_METRICS,
            full=MOE_FULL,
            report=moe_report,
        ),
        Step(
            name="ggeur_label_skew",
            runner="runners.fed",
            sweeps=[["experiment=ggeur_local_label_skew", "mode=local"]],
            by=["dataset.name", "partition.beta", "augment.kind"],
            metrics=["acc_local_mean", "acc_local_min", "acc_local_max"],
            full=["ggeur_target=2000"],
            report=fed_report,
        ),
        Step(
            name="ggeur_domain_skew",
            runner="runners.fed",
            sweeps=[["experiment=ggeur_local_domain_skew", "mode=local"]],
            by=["dataset.name", "augment.kind"],
            metrics=["acc_local_mean", "acc_local_domain_avg"],
            full=["ggeur_target=500", "ggeur_per_prototype=500"],
            report=fed_report,
        ),
        Step(
            name="ggeur_fl_label_skew",
            runner="runners.fed",
            sweeps=[["experiment=ggeur_label_skew"]],
            by=["dataset.name", "partition.beta", "strategy.name", "augment.kind"],
            metrics=["acc_best", "acc_final", "acc_domain_avg_final"],
            quick=["fl.rounds=5", "strategy=fedavg,fedprox", "seed=0,1"],
        ),
    ]
