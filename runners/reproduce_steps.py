"""The steps of ``python -m runners.reproduce``: which sweeps make which table (see README, "Reproduce")."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fedgeo.report import fed_comparison_table
from moe.replan_report import replan_report
from moe.report import moe_comparison_report

Report = Callable[[list[dict], Path], list[Path]]


@dataclass
class Step:
    """One reproduced table: multiruns of presets, then its tables.

    Attributes:
        name: the table's name (``results/<mode>/<name>.md``).
        runner: module, e.g. ``runners.moe``.
        sweeps: one multirun per entry, its overrides (e.g. ``["experiment=moetuner_single_node"]``).
        by, metrics: group-by keys and metrics of the generic table. Machine-dependent timings never go
            there (a reviewer's ``git diff`` after a reproduction must be empty when the science is the same).
        timings: wall-clock metrics, written to ``results/<mode>/timings/<name>.md`` (not tracked by git).
        quick, full: extra overrides in each mode.
        report: the comparison with the paper, from record dicts.
        data: files under ``../shared/`` that some sweeps read, and ``data_sweeps`` which sweeps (indices).
        offline: overrides that let those sweeps run without the files (e.g. ``trace=synthetic``); ``None``:
            without the files they are skipped.
    """

    name: str
    runner: str
    sweeps: list[list[str]]
    by: list[str]
    metrics: list[str]
    timings: list[str] = field(default_factory=list)
    quick: list[str] = field(default_factory=list)
    full: list[str] = field(default_factory=list)
    report: Report | None = None
    data: list[str] = field(default_factory=list)
    data_sweeps: list[int] = field(default_factory=list)
    offline: list[str] | None = None

    def plan(self, shared: Path) -> tuple[list[list[str]], list[str]]:
        """The sweeps to run with ``shared`` as the shared folder, and what is missing (paths)."""
        missing = [p for p in self.data if not (shared / p).exists()]
        if not missing:
            return self.sweeps, []
        plan = []
        for k, sweep in enumerate(self.sweeps):
            if k not in self.data_sweeps:
                plan.append(sweep)
            elif self.offline is not None:
                plan.append([*sweep, *self.offline])
        return plan, missing


MOE_METRICS = [
    "balancedness_mean", "cross_gpu_tokens", "cross_node_tokens", "layer_time_tail_s",
    "speedup_vs_contiguous", "gap",
]  # fmt: skip
MOE_TIMINGS = ["solve_time_s", "place_time_s"]
REAL_TRACE = "data/moe/deepseek_v2_lite_prefill.npz"
FL_DATA = [
    "data/fl/office_caltech10_surf800.npz",
    "data/fl/office_caltech10_googlenet1024_partial.npz",
    "data/fl/usps.npz",
    "data/fl/mnist_test10k.npz",
]
# The engine preset (4 local gloo ranks, tiny sizes): modelled reductions next to the paper's in the tracked
# table; what the engine measured (wall clock on this machine) in the untracked timings table.
SERVE_METRICS = ["moetuner_model_layer_time_tail_reduction", "paper_moetuner_a2a_time_tail_reduction"]
SERVE_MEASURED = ["model_rank_agreement", "moetuner_layer_time_tail_reduction", "contiguous_step_time_s"]
# Full mode: the whole trace, 60 s per placement (MoETuner's default budget), paper-like batches, five seeds.
MOE_FULL = [
    "trace.max_tokens=null",
    "placement.time_limit_s=60",
    "eval.batch_tokens=8192",
    "seed=0,1,2,3,4",
]

BENCHMARK_MODULES = [
    "benchmarks.engine",
    "benchmarks.trace_stats",
    "benchmarks.cost_model",
    "benchmarks.ggeur",
    "benchmarks.moetuner_solve",
    "benchmarks.fl",
    "benchmarks.replan",
    "benchmarks.layer_model",
]


def _placement_step(setting: str) -> Step:
    """MoETuner's comparison on one of the paper's settings (``single_node`` or ``multi_node``)."""
    return Step(
        name=f"moe_{setting}",
        runner="runners.moe",
        sweeps=[[f"experiment=moetuner_{setting}"]],
        by=["trace.name", "placement.label"],
        metrics=MOE_METRICS,
        timings=MOE_TIMINGS,
        full=MOE_FULL,
        report=moe_comparison_report,
        data=[REAL_TRACE],
        data_sweeps=[0],
        offline=["trace=synthetic"],
    )


STEPS: list[Step] = [
    Step(
        name="moe_trace_stats",
        runner="runners.moe",
        sweeps=[["mode=stats", "trace=deepseek_v2_lite"], ["experiment=moetuner_trace_stats"]],
        by=["trace.name", "trace.preset"],
        metrics=["imbalance_max_over_mean", "affinity_mean"],
        data=[REAL_TRACE],
        data_sweeps=[0],
    ),
    *(_placement_step(setting) for setting in ("single_node", "multi_node")),
    Step(
        name="moe_replan",
        runner="runners.moe",
        sweeps=[["experiment=moe_replan"]],
        by=["trace.name", "topology.name", "placement.label", "trace.drift", "replan.policy"],
        metrics=[
            "layer_time_tail_s",
            "effective_layer_time_s",
            "speedup_vs_static",
            "migrated_experts",
            "migration_bytes",
            "migration_s",
        ],  # fmt: skip
        timings=["place_time_s", "replan_time_s"],
        full=["trace.max_tokens=null", "trace.windows=8"],
        report=replan_report,
        data=[REAL_TRACE],
        data_sweeps=[0],
        offline=["trace=synthetic", "trace.preset=deepseek_v2_lite", "trace.tokens=60000"],
    ),
    Step(
        name="serve_placements",
        runner="runners.serve",
        sweeps=[["experiment=serve_placements"]],
        by=["model.name", "trace.name"],
        metrics=SERVE_METRICS,
        timings=SERVE_MEASURED,
        full=["engine.measure_iters=20", "engine.batch_tokens=4096", "trace.tokens=65536"],
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
        data=FL_DATA,
        data_sweeps=[0],
        report=fed_comparison_table,
    ),
    Step(
        name="ggeur_fl_label_skew",
        runner="runners.fed",
        sweeps=[["experiment=ggeur_label_skew"]],
        by=["dataset.name", "partition.beta", "strategy.name", "fl.local_budget", "augment.kind"],
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
        by=["dataset.name", "strategy.name", "fl.local_budget", "augment.kind", "augment.multi_domain"],
        metrics=["acc_best", "acc_final", "acc_domain_avg_final"],
        quick=["fl.rounds=5", "strategy=fedavg,fedprox", "seed=0,1"],
        report=fed_comparison_table,
        data=FL_DATA,
        data_sweeps=[0, 1],
    ),
]
