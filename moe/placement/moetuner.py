"""MoETuner (Go & Mahajan 2025): balanced clusters per layer (stage 1), then clusters to GPUs over all layers
minimising the per-boundary slowest link (stage 2). See ``moetuner_stage1`` / ``moetuner_stage2`` for the
formulations and docs/placement.md for what goes beyond the paper.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from common.config import schema
from common.errors import ConfigError, InputError
from common.log import get_logger
from common.progress import track
from moe.placement import milp
from moe.placement import moetuner_stage1 as stage1
from moe.placement import moetuner_stage2 as stage2
from moe.placement.base import Placement
from moe.placement.checks import check_bandwidth, check_counts, check_load, check_pairs
from moe.placement.deadline import Deadline
from moe.placement.placer import PlacementProblem, Placer
from moe.placement.replicas import add_hot_replicas

STAGE2_METHODS = ("ilp", "decomposed", "greedy", "random")
STAGE2_BOUNDS = ("pairwise", "tight")


@schema("placement", "moetuner")
@dataclass(frozen=True)
class MoETuner(Placer):
    """MoETuner's settings; ``place`` runs it.

    Attributes:
        time_limit_s: wall budget for the whole placement (both stages; Python model building included).
        solver, gap, threads, msg: see ``milp.SolverOptions`` (gap 0.025 is the paper's).
        stage1_abs_tol: stage 1 also counts a layer as solved when its imbalance is within this fraction of
            the layer's tokens of the bound (0 = only the relative gap, as the paper).
        stage1_enumerate: a layer with at most this many labellings (``G^E``) is solved by trying them all
            (exact; 0 = never, the paper's ILP for every layer; the default 65536 covers Mixtral's 8 experts
            on 4 GPUs).
        stage1_time_share: part of the budget stage 1 may use (split evenly over the layers still to solve).
        equal_size: every cluster holds exactly ``E / G`` experts (the equal-size variant).
        stage2: ``ilp`` (the paper's joint ILP; decomposed when it exceeds ``max_joint_vars``), ``decomposed``
            (block-coordinate MILP steps with a proven bound), ``greedy`` / ``random`` (ablations
            "stage 1 + greedy", "stage 1 + random mapping").
        max_joint_vars: largest number of product variables for the joint ILP.
        stage2_bound: ``tight`` (the default, beyond the paper: adds the node-threshold and sorted bounds of
            ``moetuner_bounds``, the exact chain search of ``moetuner_chain`` for up to 5 GPUs, and node
            symmetry breaking in the joint ILP) or ``pairwise`` (the per-boundary bounds only).
        replicas: extra copies of hot experts per layer added after stage 2 (0 = the paper).
    """

    name = "moetuner"

    solver: str = "highs"
    gap: float = 0.025
    time_limit_s: float = 60.0
    threads: int = 1
    msg: bool = False
    stage1_time_share: float = 0.4
    stage1_abs_tol: float = 0.001
    stage1_enumerate: int = 65536
    equal_size: bool = False
    stage2: str = "ilp"
    max_joint_vars: int = 20000
    replicas: int = 0
    stage2_bound: str = "tight"

    def __post_init__(self) -> None:
        super().__post_init__()  # the time budget
        self.solver_options()  # validates solver, gap, threads
        if self.stage2 not in STAGE2_METHODS:
            raise ConfigError("stage2", f"expected one of {list(STAGE2_METHODS)}, got {self.stage2!r}")
        if not isinstance(self.stage1_abs_tol, int | float) or not 0 <= self.stage1_abs_tol < 1:
            raise ConfigError("stage1_abs_tol", f"expected a number in [0, 1), got {self.stage1_abs_tol!r}")
        if (
            isinstance(self.stage1_enumerate, bool)
            or not isinstance(self.stage1_enumerate, int)
            or not 0 <= self.stage1_enumerate <= 2**20
        ):
            raise ConfigError(
                "stage1_enumerate", f"expected an integer in [0, {2**20}], got {self.stage1_enumerate!r}"
            )
        if not isinstance(self.stage1_time_share, int | float) or not 0 < self.stage1_time_share < 1:
            raise ConfigError(
                "stage1_time_share", f"expected a number in (0, 1), got {self.stage1_time_share!r}"
            )
        if (
            isinstance(self.max_joint_vars, bool)
            or not isinstance(self.max_joint_vars, int)
            or self.max_joint_vars < 0
        ):
            raise ConfigError(
                "max_joint_vars", f"expected a non-negative integer, got {self.max_joint_vars!r}"
            )
        if isinstance(self.replicas, bool) or not isinstance(self.replicas, int) or self.replicas < 0:
            raise ConfigError("replicas", f"expected a non-negative integer, got {self.replicas!r}")
        if self.stage2_bound not in STAGE2_BOUNDS:
            raise ConfigError(
                "stage2_bound", f"expected one of {list(STAGE2_BOUNDS)}, got {self.stage2_bound!r}"
            )
        if not isinstance(self.equal_size, bool):
            raise ConfigError("equal_size", f"expected true or false, got {self.equal_size!r}")

    def solver_options(self) -> milp.SolverOptions:
        return milp.SolverOptions(
            solver=self.solver,
            gap=self.gap,
            threads=self.threads,
            msg=self.msg,
        )

    @classmethod
    def names(cls) -> list[str]:
        """The algorithm's options (every field but the table ``label``)."""
        return [f.name for f in fields(cls) if f.name != "label"]

    def place(self, problem: PlacementProblem) -> Placement:
        return moetuner(problem.load, problem.pairs, problem.bandwidth, self, seed=problem.seed)


def stage1_all(
    load: np.ndarray, num_gpus: int, options: MoETuner, deadline: Deadline
) -> tuple[np.ndarray, dict[str, Any]]:
    """Stage 1 for every layer by ``deadline``, each layer an equal share of the time left.

    Returns ``cluster_of`` int64 ``[L, E]`` and a report: per-layer lists (status, objective, bound, gap,
    solve_time_s) and totals.
    """
    num_layers = load.shape[0]
    solver = options.solver_options()
    rows, reps = [], []
    for li in track(range(num_layers), total=num_layers, description="moetuner stage 1"):
        layer_deadline = deadline.share_of_left(1.0 / (num_layers - li))
        res = stage1.solve_layer(
            load[li],
            num_gpus,
            options.equal_size,
            solver,
            layer_deadline,
            options.stage1_abs_tol,
            options.stage1_enumerate,
        )
        rows.append(res.cluster_of)
        reps.append(res.report)
    gaps = [r["gap"] for r in reps]
    report = {
        "status": milp.worst_status(*(r["status"] for r in reps)) if reps else milp.OPTIMAL,
        "objective": float(sum(r["objective"] for r in reps)),
        "bound": float(sum(r["bound"] for r in reps)),
        "max_layer_gap": None if any(g is None for g in gaps) else float(max(gaps)),
        "solve_time_s": round(float(sum(r["solve_time_s"] for r in reps)), 6),
        "layers_solver_ran": int(sum(r["solver_ran"] for r in reps)),
        "per_layer": {
            k: [r[k] for r in reps] for k in ("status", "objective", "bound", "gap", "solve_time_s")
        },
        "size_per_layer_max": max(
            (r["size"] for r in reps if r["size"]), key=lambda s: s["variables"], default=None
        ),
    }
    report["gap"] = milp.relative_gap(report["objective"], report["bound"])
    return np.stack(rows), report


def _info(opts: MoETuner, rep1: dict, rep2: dict, notes: list[str], elapsed_s: float) -> dict[str, Any]:
    """The placement's ``info``: the worse status of the two stages (the stage 2 one for the ablations),
    stage 2's objective, bound and gap, the memory outcome, both stage reports and the notes."""
    status = rep2.get("status", milp.TIME_LIMIT)
    if opts.stage2 in ("ilp", "decomposed"):
        status = milp.worst_status(rep1["status"], status)
    return {
        "status": status,
        "objective": rep2["objective"],
        "bound": rep2["bound"],
        "gap": rep2["gap"],
        "solve_time_s": round(elapsed_s, 6),
        "size": rep2.get("size") or rep1["size_per_layer_max"],
        "solver": opts.solver,
        "options": {k: getattr(opts, k) for k in MoETuner.names()},
        "memory": rep2["memory"],
        "memory_relaxed": rep2["memory"]["mode"] == "relaxed",
        "stage1": rep1,
        "stage2": rep2,
        "notes": notes,
    }


def moetuner(
    load: np.ndarray,
    pairs: np.ndarray,
    bandwidth: np.ndarray,
    options: MoETuner | None = None,
    seed: int = 0,
) -> Placement:
    """Place experts with MoETuner.

    Args:
        load: ``P [L, E]`` token copies per expert per layer.
        pairs: ``R [L-1, E, E]`` cross-layer pair counts (``moe.stats.cross_layer_counts``).
        bandwidth: ``B [G, G]`` GB/s between GPUs.
        options: see ``MoETuner``.
        seed: for ``stage2=random``.

    Returns:
        A ``Placement`` named ``moetuner``; ``info`` has status, objective (stage 2, pair counts per GB/s),
        bound, gap, solve_time_s, size, ``stage1`` and ``stage2`` reports, ``memory`` and ``notes``.
    """
    opts = options or MoETuner()
    p = check_load(load)
    num_layers, num_experts = p.shape
    b = check_bandwidth(bandwidth)
    g = b.shape[0]
    r = check_pairs(pairs, num_layers, num_experts)
    check_counts(num_layers, num_experts, g, equal=opts.equal_size)
    log = get_logger("moe.placement.moetuner")
    budget = Deadline.after(opts.time_limit_s)
    cluster_of, rep1 = stage1_all(p, g, opts, budget.fraction(opts.stage1_time_share))
    log.info(
        f"stage 1: {num_layers} layers, imbalance {rep1['objective']:.1f} tokens, gap {rep1['gap']}, "
        f"{budget.elapsed():.1f} s"
    )
    ctraffic = stage2.cluster_traffic(r, cluster_of, g)
    sizes = np.stack([np.bincount(row, minlength=g) for row in cluster_of])
    tight = opts.stage2_bound == "tight"
    problem2 = stage2.Stage2Problem(ctraffic, sizes, b, opts.solver_options(), tight)
    res2 = stage2.solve(problem2, opts.stage2, budget.at_least(0.05), opts.max_joint_vars, seed)
    rep2 = res2.report
    log.info(
        f"stage 2 ({rep2['method']}): objective {rep2['objective']:.4g}, bound {rep2['bound']:.4g}, "
        f"gap {rep2['gap']}, {rep2['wall_time_s']:.1f} s"
    )
    gpu_of = res2.mapping[np.arange(num_layers)[:, None], cluster_of]  # [L, E]
    assignment = [[np.flatnonzero(row == gg).tolist() for gg in range(g)] for row in gpu_of]
    notes = list(rep2.get("notes", []))
    if opts.replicas:
        assignment, added = add_hot_replicas(assignment, p, opts.replicas)
        notes.append(
            f"replicas: {int(added.sum())} hot-expert copies added ({opts.replicas} per layer allowed)"
        )
    info = _info(opts, rep1, rep2, notes, budget.elapsed())
    try:
        return Placement(assignment, num_experts=num_experts, name="moetuner", info=info)
    except InputError as exc:  # a bug here, not the user's input
        raise RuntimeError(f"moetuner built an invalid placement: {exc}") from exc
