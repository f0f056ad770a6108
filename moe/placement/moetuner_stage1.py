"""MoETuner stage 1: per layer, group the E experts into G clusters of balanced token load (an ILP).

Formulation (papers.md, with its fix): binary ``x[c, e]``, every expert in exactly one cluster, every cluster
non-empty (or exactly ``E / G`` experts in the equal-size variant); minimise ``sum_c d_c`` with
``d_c >= T_c - T_mean`` and ``d_c >= T_mean - T_c``, ``T_c = sum_e P[e] x[c, e]``, ``T_mean = sum_e P[e] / G``.

Beyond the paper, three things make it fast and its gap provable:
- symmetry breaking: with experts ranked by load, expert of rank r may only sit in clusters ``0..r``
  (relabel clusters by their heaviest member; no optimum is lost);
- a combinatorial lower bound (integrality of the cluster loads, and experts heavier than ``T_mean``), added
  as a valid cut ``sum_c d_c >= LB`` so the solver can prove the gap;
- a warm start from longest-processing-time packing plus move/swap local search; when that start is
  already within the requested gap of the bound, the solver is not called at all.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import pulp

from moe.placement import milp
from moe.placement.deadline import Deadline
from moe.placement.greedy import balanced_pack


@dataclass
class Stage1Layer:
    """One layer's clustering: ``cluster_of`` int64 ``[E]`` in ``0..G-1`` and the solve report (a dict)."""

    cluster_of: np.ndarray
    report: dict


def imbalance(load: np.ndarray, cluster_of: np.ndarray, num_clusters: int) -> float:
    """Stage 1 objective ``sum_c |T_c - T_mean|`` (tokens) of a clustering of one layer's loads ``[E]``."""
    t = np.bincount(cluster_of, weights=load, minlength=num_clusters)
    return float(np.abs(t - load.sum() / num_clusters).sum())


def lower_bound(load: np.ndarray, num_clusters: int) -> float:
    """A valid lower bound on the stage 1 objective (tokens), any cluster sizes.

    Two arguments, the larger wins: (1) with integer loads, G integers summing to S deviate from S/G by at
    least ``2 q (G - q) / G`` in total (``q = S mod G``); (2) ``sum_c |T_c - m| = 2 sum_c (T_c - m)^+`` and
    the cluster of an expert heavier than ``m`` exceeds ``m`` by at least its excess.
    """
    g = num_clusters
    m = load.sum() / g
    heavy = 2.0 * np.clip(load - m, 0.0, None).sum()
    integral = 0.0
    if np.all(load == np.round(load)):
        q = int(round(load.sum())) % g
        integral = 2.0 * q * (g - q) / g
    return float(max(heavy, integral))


def heuristic(load: np.ndarray, num_clusters: int, equal_size: bool, max_iter: int = 500) -> np.ndarray:
    """LPT packing then best-improvement moves (unequal sizes) and swaps between the heaviest/lightest clusters.

    Returns int64 ``[E]`` cluster ids; every cluster non-empty (exactly ``E / G`` experts if ``equal_size``).
    """
    e, g = load.size, num_clusters
    cap = e // g if equal_size else e - g + 1
    cl = balanced_pack(load, g, cap)
    for empty in np.flatnonzero(np.bincount(cl, minlength=g) == 0):  # zero loads can leave a cluster empty
        cnt = np.bincount(cl, minlength=g)
        donors = np.flatnonzero(cnt[cl] > 1)
        cl[donors[np.argmin(load[donors])]] = empty
    mean = load.sum() / g
    for _ in range(max_iter):
        t = np.bincount(cl, weights=load, minlength=g)
        cnt = np.bincount(cl, minlength=g)
        dev = np.abs(t - mean)
        best_gain, best = 1e-9, None
        hi = int(np.argmax(t))
        for lo in range(g):
            if lo == hi:
                continue
            a = np.flatnonzero(cl == hi)
            b = np.flatnonzero(cl == lo)
            base = dev[hi] + dev[lo]
            if not equal_size and cnt[hi] > 1:  # move one expert hi -> lo
                gain = base - (np.abs(t[hi] - load[a] - mean) + np.abs(t[lo] + load[a] - mean))
                i = int(np.argmax(gain))
                if gain[i] > best_gain:
                    best_gain, best = float(gain[i]), ((a[i], lo),)
            delta = load[a][:, None] - load[b][None, :]  # swap a_i <-> b_j
            gain = base - (np.abs(t[hi] - delta - mean) + np.abs(t[lo] + delta - mean))
            i, j = np.unravel_index(int(np.argmax(gain)), gain.shape)
            if gain[i, j] > best_gain:
                best_gain, best = float(gain[i, j]), ((a[i], lo), (b[j], hi))
        if best is None:
            break
        for expert, cluster in best:
            cl[expert] = cluster
    return cl


def canonical(cluster_of: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """Relabel clusters in the order of their lowest-rank (heaviest) member, as the symmetry cut requires."""
    order = np.argsort(rank)  # experts heaviest first
    relabel: dict[int, int] = {}
    for ex in order:
        c = int(cluster_of[ex])
        if c not in relabel:
            relabel[c] = len(relabel)
    return np.array([relabel[int(c)] for c in cluster_of], dtype=np.int64)


def _model(
    load: np.ndarray, g: int, equal_size: bool, rank: np.ndarray, lb: float, start: np.ndarray
) -> tuple[pulp.LpProblem, dict[tuple[int, int], pulp.LpVariable]]:
    """Stage 1's MILP for one layer, warm-started at ``start``; ``x[c, e]`` exists for ``c <= rank[e]``
    (the symmetry cut: the heaviest expert opens cluster 0, ...)."""
    e = load.size
    prob = pulp.LpProblem("moetuner_stage1", pulp.LpMinimize)
    x = {
        (c, ex): prob.add_variable(f"x_{c}_{ex}", cat=pulp.LpBinary)
        for ex in range(e)
        for c in range(min(g, int(rank[ex]) + 1))
    }
    d = [prob.add_variable(f"d_{c}", lowBound=0) for c in range(g)]
    mean = float(load.sum() / g)
    prob += pulp.lpSum(d)
    prob += pulp.lpSum(d) >= lb, "combinatorial_bound"
    members: list[list[int]] = [[] for _ in range(g)]
    for c, ex in x:
        members[c].append(ex)
    for ex in range(e):
        prob += pulp.lpSum(x[c, ex] for c in range(min(g, int(rank[ex]) + 1))) == 1, f"one_{ex}"
    for c in range(g):
        tc = pulp.LpAffineExpression([(x[c, ex], float(load[ex])) for ex in members[c]])
        count = pulp.lpSum(x[c, ex] for ex in members[c])
        prob += (count == e // g) if equal_size else (count >= 1), f"size_{c}"
        prob += d[c] - tc >= -mean, f"over_{c}"
        prob += d[c] + tc >= mean, f"under_{c}"
    t = np.bincount(start, weights=load, minlength=g)
    for (c, ex), var in x.items():
        var.setInitialValue(1 if start[ex] == c else 0)
    for c in range(g):
        d[c].setInitialValue(abs(t[c] - mean))
    return prob, x


def _best_of(
    load: np.ndarray,
    g: int,
    res: milp.SolveResult,
    x: dict[tuple[int, int], pulp.LpVariable],
    start: np.ndarray,
    start_obj: float,
) -> tuple[np.ndarray, float, list[str]]:
    """The solver's clustering when it has one no worse than the warm start, else the warm start; with
    notes saying which."""
    notes = list(res.notes)
    if not res.has_solution:
        notes.append(
            f"solver ended '{res.status}' without a solution; kept the warm start (LPT + local search)"
        )
        return start, start_obj, notes
    sol = np.full(load.size, -1, dtype=np.int64)
    for (c, ex), var in x.items():
        if (var.varValue or 0) > 0.5:
            sol[ex] = c
    if (sol >= 0).all() and imbalance(load, sol, g) <= start_obj:
        return sol, imbalance(load, sol, g), notes
    notes.append("solver solution not better than the warm start; kept the warm start")
    return start, start_obj, notes


def enumerate_layer(load: np.ndarray, num_clusters: int, equal_size: bool) -> np.ndarray:
    """The optimal clustering ``[E]`` by trying all ``G^E`` labellings (only for a few experts: Mixtral's 8 on
    4 GPUs are 65,536); the first optimum in ``itertools.product`` order, relabelled by ``canonical``."""
    e, g = load.size, num_clusters
    labels = np.indices((g,) * e).reshape(e, -1).T  # [G^E, E]
    onehot = labels[:, :, None] == np.arange(g)[None, None, :]  # [G^E, E, G]
    counts = onehot.sum(axis=1)
    ok = (counts == e // g).all(axis=1) if equal_size else (counts >= 1).all(axis=1)
    loads = np.einsum("e,neg->ng", load.astype(float), onehot)
    value = np.where(ok, np.abs(loads - load.sum() / g).sum(axis=1), np.inf)
    rank = np.empty(e, dtype=np.int64)
    rank[np.argsort(-load, kind="stable")] = np.arange(e)
    return canonical(labels[int(np.argmin(value))].astype(np.int64), rank)


def solve_layer(
    load: np.ndarray,
    num_clusters: int,
    equal_size: bool,
    options: milp.SolverOptions,
    deadline: Deadline,
    abs_tol: float = 0.0,
    enumerate_max: int = 0,
) -> Stage1Layer:
    """Cluster one layer's experts.

    Args:
        load: float ``[E]``, token copies per expert (``P[l]``).
        num_clusters: G.
        equal_size: exactly ``E / G`` experts per cluster.
        options: solver settings (``gap`` is the stopping gap).
        deadline: when this layer's time is up (model building included).
        abs_tol: also stop when ``objective - bound <= abs_tol * sum(load)`` (an imbalance that is a tiny part
            of the layer's tokens); the relative gap is ill-posed here since the optimum is often near 0.
        enumerate_max: when ``G^E`` is at most this, ``enumerate_layer`` solves the layer exactly instead.

    Returns:
        ``Stage1Layer``; ``report`` holds status, objective, bound (the larger of the solver's and the
        combinatorial bound), gap, solve_time_s, size, and whether the solver ran.
    """
    e, g = load.size, num_clusters
    rank = np.empty(e, dtype=np.int64)
    rank[np.argsort(-load, kind="stable")] = np.arange(e)
    start = canonical(heuristic(load, g, equal_size), rank)
    start_obj = imbalance(load, start, g)
    lb = lower_bound(load, g)
    gap0 = milp.relative_gap(start_obj, lb)
    tol = float(abs_tol * load.sum())
    report = {"heuristic_objective": start_obj, "combinatorial_bound": lb, "abs_tolerance": tol}
    if (gap0 is not None and gap0 <= options.gap) or start_obj - lb <= tol:
        report.update(status=milp.OPTIMAL, objective=start_obj, bound=lb, gap=gap0, solve_time_s=0.0)
        report.update(size=None, solver_ran=False, notes=["warm start proved within gap by the bound"])
        return Stage1Layer(start, report)

    if g**e <= enumerate_max:
        t0 = time.monotonic()
        best = enumerate_layer(load, g, equal_size)
        obj = imbalance(load, best, g)
        report.update(status=milp.OPTIMAL, objective=obj, bound=obj, gap=milp.relative_gap(obj, obj))
        report.update(solve_time_s=round(time.monotonic() - t0, 6), size=None, solver_ran=False)
        report.update(notes=[f"optimal by enumerating all {g**e} labellings"])
        return Stage1Layer(best, report)
    prob, x = _model(load, g, equal_size, rank, lb, start)
    if tol > 0:
        options = replace(options, abs_gap=tol)
    res = milp.solve(prob, options, deadline, warm_start=True)
    cluster_of, obj, notes = _best_of(load, g, res, x, start, start_obj)
    bound = max(lb, res.bound) if res.bound is not None else lb
    bound = min(bound, obj)
    gap = milp.relative_gap(obj, bound)
    within = (gap is not None and gap <= options.gap) or obj - bound <= tol
    status = milp.OPTIMAL if within else milp.TIME_LIMIT
    report.update(status=status, objective=obj, bound=bound, gap=gap, solve_time_s=res.solve_time_s)
    report.update(size=res.to_info()["size"], solver_ran=True, solver_status=res.status, notes=notes)
    return Stage1Layer(cluster_of, report)
