"""ExFlow-style placement: keep consecutive-layer token paths on one GPU (ExFlow, IPDPS 2024).

Every expert in one partition, exactly ``E / G`` experts per partition per layer; minimise the pair counts
``R[l, e1, e2]`` whose experts sit in different partitions (with top-k traces R counts all k x k pairs of a
token, used as the affinity). Hierarchical when there are several nodes: partition into nodes first, then each
node's experts onto its GPUs.

Two solvers of the same program:
- ``ilp``: the integer program over all layers (``x[l, e, g]`` binary, ``w <= x[l, e1, g]``,
  ``w <= x[l+1, e2, g]`` for pairs with ``R > 0``), warm-started; only when it fits ``max_vars``;
- ``sweeps``: block-coordinate ascent; with the neighbouring layers fixed, a layer's locality is linear in its
  own assignment, a transportation problem solved exactly by linear assignment over the ``E / G`` slots of
  each partition. Forward chain first, then sweeps until no layer improves.
A bound on the kept locality (each expert keeps at most its ``E / G`` largest pair counts, per side) makes
the gap of either solver provable.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pulp
from scipy.optimize import linear_sum_assignment

from common.config import schema
from common.errors import ConfigError, InputError
from moe.placement import milp
from moe.placement.base import Placement
from moe.placement.checks import check_counts, check_nodes, check_pairs
from moe.placement.deadline import Deadline
from moe.placement.placer import PlacementProblem, Placer

METHODS = ("auto", "ilp", "sweeps")


def _assign(gain: np.ndarray, cap: int) -> np.ndarray:
    """Exact max-gain assignment of ``n`` items to ``parts`` with ``cap`` items each; ``gain [n, parts]``."""
    slots = np.repeat(gain, cap, axis=1)
    rows, cols = linear_sum_assignment(slots, maximize=True)
    out = np.empty(gain.shape[0], dtype=np.int64)
    out[rows] = cols // cap
    return out


def _sweeps(
    pairs: np.ndarray, members: list[np.ndarray], parts: int, deadline: Deadline, max_sweeps: int = 10
):
    """Coordinate ascent on the part of each member expert, layer by layer (see module docstring).

    Args:
        pairs: ``R [L-1, E, E]``. members: per layer, the expert ids to place (same count ``n`` each layer).
        parts: number of partitions (``n / parts`` experts each).

    Returns:
        ``part [L, n]`` (aligned with ``members``), and the number of sweeps done.
    """
    num_layers = len(members)
    n = members[0].size
    cap = n // parts
    part = np.empty((num_layers, n), dtype=np.int64)
    part[0] = np.repeat(np.arange(parts), cap)

    def gain(li: int) -> np.ndarray:
        g = np.zeros((n, parts))
        if li > 0:
            sub = pairs[li - 1][np.ix_(members[li - 1], members[li])]  # [prev, cur]
            onehot = np.eye(parts)[part[li - 1]]  # [prev, parts]
            g += sub.T @ onehot
        if li < num_layers - 1:
            sub = pairs[li][np.ix_(members[li], members[li + 1])]
            g += sub @ np.eye(parts)[part[li + 1]]
        return g

    for li in range(1, num_layers):  # forward chain: only the previous layer is known
        sub = pairs[li - 1][np.ix_(members[li - 1], members[li])]
        part[li] = _assign(sub.T @ np.eye(parts)[part[li - 1]], cap)
    done = 0
    for _ in range(max_sweeps):
        if deadline.expired():
            break
        done += 1
        changed = False
        for li in range(num_layers):
            gmat = gain(li)
            new = _assign(gmat, cap)
            old_val = gmat[np.arange(n), part[li]].sum()
            if gmat[np.arange(n), new].sum() > old_val + 1e-9:
                part[li] = new
                changed = True
        if not changed:
            break
    return part, done


def _ilp(pairs, members, parts, options, deadline, warm):
    """The joint integer program over all layers, solved by ``deadline`` (a ``Deadline``; model building
    included); returns (part or None, SolveResult)."""
    num_layers = len(members)
    n = members[0].size
    cap = n // parts
    prob = pulp.LpProblem("exflow", pulp.LpMinimize)
    x = {
        (li, i, g): prob.add_variable(f"x_{li}_{i}_{g}", cat=pulp.LpBinary)
        for li in range(num_layers)
        for i in range(n)
        for g in range(parts)
    }
    terms, total = [], 0.0
    for li in range(num_layers - 1):
        sub = pairs[li][np.ix_(members[li], members[li + 1])]
        total += float(sub.sum())
        for i, j in zip(*np.nonzero(sub), strict=True):
            for g in range(parts):
                w = prob.add_variable(f"w_{li}_{i}_{j}_{g}", lowBound=0, upBound=1)
                prob += w - x[li, i, g] <= 0
                prob += w - x[li + 1, j, g] <= 0
                terms.append((w, -float(sub[i, j])))
                w.setInitialValue(1 if warm[li, i] == g and warm[li + 1, j] == g else 0)
    prob += pulp.LpAffineExpression(terms, constant=total)
    for li in range(num_layers):
        for i in range(n):
            prob += pulp.lpSum(x[li, i, g] for g in range(parts)) == 1
        for g in range(parts):
            prob += pulp.lpSum(x[li, i, g] for i in range(n)) == cap
    for (li, i, g), var in x.items():
        var.setInitialValue(1 if warm[li, i] == g else 0)
    res = milp.solve(prob, options, deadline, warm_start=True)
    if not res.has_solution:
        return None, res
    part = np.full((num_layers, n), -1, dtype=np.int64)
    for (li, i, g), var in x.items():
        if (var.varValue or 0) > 0.5:
            part[li, i] = g
    ok = (part >= 0).all() and all((np.bincount(row, minlength=parts) == cap).all() for row in part)
    return (part if ok else None), res


def _ilp_size(pairs, members, parts) -> int:
    nnz = sum(
        int(np.count_nonzero(pairs[li][np.ix_(members[li], members[li + 1])]))
        for li in range(len(members) - 1)
    )
    return nnz * parts + len(members) * members[0].size * parts


def _cross(pairs, members, part) -> float:
    """Pair counts whose two experts are in different partitions."""
    out = 0.0
    for li in range(len(members) - 1):
        sub = pairs[li][np.ix_(members[li], members[li + 1])]
        out += float(sub.sum() - sub[part[li][:, None] == part[li + 1][None, :]].sum())
    return out


def locality_bound(pairs: np.ndarray, per_gpu: int) -> float:
    """Upper bound on the pair counts kept on one GPU: per boundary, the smaller of the row-wise and
    column-wise sums of each expert's ``per_gpu`` largest counts."""
    out = 0.0
    for r in pairs:
        rows = -np.sort(-r, axis=1)[:, :per_gpu].sum()
        cols = -np.sort(-r, axis=0)[:per_gpu, :].sum()
        out += float(min(rows, cols))
    return out


@dataclass
class _Run:
    """One ExFlow placement: the inputs every partition level shares, and what the levels report."""

    r: np.ndarray  # R [L-1, E, E]
    method: str
    max_vars: int
    opts: milp.SolverOptions
    levels: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def level(self, members: list[np.ndarray], parts: int, budget_end: Deadline) -> np.ndarray:
        """Partition each layer's ``members`` into ``parts`` equal parts by sweeps, then the ILP if it fits."""
        r = self.r
        part, sweeps = _sweeps(r, members, parts, budget_end)
        rep: dict = {"parts": parts, "method": "sweeps", "sweeps": sweeps}
        size = _ilp_size(r, members, parts)
        if self.method in ("auto", "ilp") and size <= self.max_vars and r.shape[0] > 0:
            sol, res = _ilp(r, members, parts, self.opts, budget_end, part)
            rep.update(res.to_info())
            self.notes.extend(f"ExFlow ILP ({parts} parts): {note}" for note in res.notes)
            if sol is not None and _cross(r, members, sol) <= _cross(r, members, part):
                part = sol
                rep["method"] = "ilp"
            else:
                self.notes.append(
                    f"ExFlow ILP ({parts} parts) ended '{res.status}'; kept the sweeps' assignment"
                )
        elif self.method in ("auto", "ilp"):
            self.notes.append(
                f"ExFlow ILP needs {size} variables > max_vars={self.max_vars}; solved by sweeps"
            )
        self.levels.append(rep)
        return part

    def info(self, gpu_of: np.ndarray, per_gpu: int, budget: Deadline, hierarchical: bool) -> dict:
        """The placement's report: cross-GPU pair fraction as objective, its bound and gap, status, levels."""
        r = self.r
        total = float(r.sum())
        all_experts = [np.arange(r.shape[1]) for _ in range(r.shape[0] + 1)]
        cross = _cross(r, all_experts, gpu_of)
        bound_cross = max(0.0, total - locality_bound(r, per_gpu))
        obj = cross / total if total else 0.0
        bound = min(obj, bound_cross / total) if total else 0.0
        gap = milp.relative_gap(obj, bound)
        return {
            "status": milp.placement_status(gap, self.opts.gap, budget),
            "objective": obj,
            "bound": bound,
            "gap": gap,
            "solve_time_s": round(budget.elapsed(), 6),
            "size": next((lv.get("size") for lv in self.levels if lv.get("size")), None),
            "levels": self.levels,
            "hierarchical": hierarchical,
            "notes": self.notes,
        }


def exflow(
    pairs: np.ndarray,
    num_gpus: int,
    gpus_per_node: int,
    method: str = "auto",
    options: milp.SolverOptions | None = None,
    max_vars: int = 20000,
    deadline: Deadline | None = None,
) -> Placement:
    """Place experts to minimise cross-GPU consecutive-layer pairs.

    Args:
        pairs: ``R [L-1, E, E]`` cross-layer pair counts.
        num_gpus: G (must divide E). gpus_per_node: GPUs per node; more than one node = hierarchical.
        method: ``ilp`` (joint program, falls back to sweeps when larger than ``max_vars``), ``sweeps``, or
            ``auto`` (= ``ilp``).
        options: solver settings.
        max_vars: largest joint program (variables) attempted.
        deadline: the budget of the whole placement (default: 30 s from the call).

    Returns:
        A placement named ``exflow``; ``info``: status, objective (cross-GPU pair fraction), bound, gap,
        solve_time_s, size, method per level, notes.
    """
    r = np.asarray(pairs)
    if r.ndim != 3 or r.shape[1] != r.shape[2]:
        raise InputError(f"exflow: 'R' must be a [layers-1, experts, experts] array, got shape {r.shape}")
    num_layers = r.shape[0] + 1
    e = r.shape[1]
    r = check_pairs(r, num_layers, e)
    per_gpu = check_counts(num_layers, e, num_gpus, equal=True)
    nodes = check_nodes(num_gpus, gpus_per_node)
    if method not in METHODS:
        raise ConfigError("method", f"expected one of {list(METHODS)}, got {method!r}")
    opts = options or milp.SolverOptions()
    budget = deadline or Deadline.after(30.0)
    run = _Run(r, method, max_vars, opts)
    all_experts = [np.arange(e) for _ in range(num_layers)]
    if nodes > 1:
        node_of = run.level(all_experts, nodes, budget.fraction(0.5))
        gpu_of = np.empty((num_layers, e), dtype=np.int64)
        for n in range(nodes):
            members = [np.flatnonzero(node_of[li] == n) for li in range(num_layers)]
            local = run.level(members, gpus_per_node, budget.fraction(0.5 + 0.5 * (n + 1) / nodes))
            for li in range(num_layers):
                gpu_of[li, members[li]] = n * gpus_per_node + local[li]
    else:
        gpu_of = run.level(all_experts, num_gpus, budget)
    info = run.info(gpu_of, per_gpu, budget, nodes > 1)
    return Placement.from_expert_to_gpu(gpu_of, num_gpus, name="exflow", info=info)


@schema("placement", "exflow")
@dataclass(frozen=True)
class ExFlow(Placer):
    """ExFlow-style program: minimise cross-GPU consecutive-layer pairs, ``E / G`` experts per GPU.

    Attributes:
        method: ``auto`` / ``ilp`` / ``sweeps`` (see ``exflow``).
        max_vars: largest joint integer program attempted.
        time_limit_s: the budget of the whole placement, seconds.
        solver, gap, threads, msg: see ``milp.SolverOptions``.
    """

    name = "exflow"
    method: str = "auto"
    max_vars: int = 20000
    solver: str = "highs"
    gap: float = 0.025
    time_limit_s: float = 30.0
    threads: int = 1
    msg: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()  # the time budget
        self.solver_options()  # validates solver, gap, threads
        if self.method not in METHODS:
            raise ConfigError("method", f"expected one of {list(METHODS)}, got {self.method!r}")

    def solver_options(self) -> milp.SolverOptions:
        return milp.SolverOptions(self.solver, self.gap, self.threads, self.msg)

    def place(self, problem: PlacementProblem) -> Placement:
        return exflow(
            problem.pairs,
            problem.num_gpus,
            problem.gpus_per_node,
            method=self.method,
            options=self.solver_options(),
            max_vars=self.max_vars,
            deadline=Deadline.after(self.time_limit_s),
        )
