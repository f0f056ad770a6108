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
# The engine preset (4 local gloo ranks, tiny sizes): measured next to modelled reductions, and the agreement.
SERVE_METRICS = [
    "model_rank_agreement", "contiguous_step_time_s", "moetuner_layer_time_tail_reduction",
    "moetuner_model_layer_time_tail_reduction", "paper_moetuner_a2a_time_tail_reduction",
]  # fmt: skip
# Full mode: the whole trace, each placement's own solver budget, paper-like batches, five seeds.
MOE_FULL = [
    "trace.max_tokens=null",
    "placement_time_limit_s=null",
    "eval.batch_tokens=8192",
    "seed=0,1,2,3,4",
]

BENCHMARK_MODULES = [
    "benchmarks.engine",
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
            name="serve_placements",
            runner="runners.serve",
            sweeps=[["experiment=serve_placements"]],
            by=["model.name", "trace.name"],
            metrics=SERVE_METRICS,
            full=["engine.measure_iters=20", "engine.batch_tokens=4096", "trace.tokens=65536"],
        ),
        Step(
            name="ggeur_label_skew",
            runner="runners.fed",
            sweeps=[["experiment=ggeur_local_label_skew"]],
            by=["dataset.name", "partition.beta", "augment.kind"],
            metrics=["acc_local_mean", "acc_local_min", "acc_local_max"],
            full=["augment.target_per_class=2000"],
            report=fed_report,
        ),
        Step(
            name="ggeur_domain_skew",
            runner="runners.fed",
            sweeps=[["experiment=ggeur_local_domain_skew"]],
            by=["dataset.name", "augment.kind"],
            metrics=["acc_local_mean", "acc_local_domain_avg"],
            full=["augment.target_per_class=500", "augment.per_prototype=500"],
            report=fed_report,
        ),
    ]
