"""MoETuner stage 2: map every layer's G clusters one-to-one onto the G GPUs, over all layers at once.

Notation: ``C [L-1, G, G]`` cluster-to-cluster pair counts between consecutive layers (cluster c1 of layer l,
cluster c2 of layer l+1), ``sizes [L, G]`` experts per cluster, ``B [G, G]`` bandwidth (GB/s),
``mapping [L, G]`` the GPU of each cluster (a permutation per layer).

Per boundary l the cost is the slowest link ``M_l = max_{g1 != g2} traffic_l[g1, g2] / B[g1, g2]`` with
``traffic_l[g1, g2] = sum C[l, c1, c2]`` over c1 on g1 (layer l) and c2 on g2 (layer l+1); units: pair counts
per GB/s. Stage 2 minimises ``sum_l M_l`` under the memory constraint (every GPU holds ``E L / G`` experts
over the model; relaxed to at most ``ceil(E L / G)`` when that is infeasible).

Methods:
- ``joint_ilp``: the paper's ILP (``y[c, g, l]``, ``z >= y1 + y2 - 1``, one ``M_l`` per boundary);
  ``G^2 * nnz(C) * (L-1)`` product variables, so only for small cases.
- ``improve`` (beyond the paper, for the large cases): block-coordinate descent; with the neighbouring layers
  fixed, a layer's traffic is *linear* in its own ``y``, so each step is a small exact MILP (``G^2``
  binaries) that minimises ``M_{l-1} + M_l`` with the memory constraint as a penalised slack; steps never
  make the placement worse.
- ``lower_bounds``: a per-boundary bound valid for every mapping (locality by linear assignment, and each
  cluster's unavoidable off-GPU traffic spread over its links), so the gap of any method is proven.
- ``greedy_chain`` (ablation "stage 1 + greedy") and ``random_mapping`` (ablation "stage 1 + random").
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

import numpy as np
import pulp
from scipy.optimize import linear_sum_assignment

from moe.placement import milp
from moe.placement.deadline import Deadline
from moe.placement.moetuner_bottleneck import best_start
from moe.placement.moetuner_bounds import tight_bounds, two_level
from moe.placement.moetuner_chain import MAX_PERMUTATIONS, solve_chain

TIGHT_SWEEPS = 100  # descent sweeps with ``tight`` (it stops earlier when no layer improves)


def cluster_traffic(pairs: np.ndarray, cluster_of: np.ndarray, num_clusters: int) -> np.ndarray:
    """``C [L-1, G, G]`` from ``R [L-1, E, E]`` and ``cluster_of [L, E]`` (papers.md's fixed indexing)."""
    onehot = np.eye(num_clusters)[cluster_of]  # [L, E, G]
    return np.einsum("lec,lef,lfd->lcd", onehot[:-1], pairs, onehot[1:])


def _inverse(mapping: np.ndarray) -> np.ndarray:
    inv = np.empty_like(mapping)
    rows = np.arange(mapping.shape[0])[:, None]
    inv[rows, mapping] = np.arange(mapping.shape[1])[None, :]
    return inv


def gpu_traffic(mapping: np.ndarray, ctraffic: np.ndarray) -> np.ndarray:
    """``[L-1, G, G]`` traffic between GPUs implied by a cluster-to-GPU ``mapping [L, G]``."""
    inv = _inverse(mapping)  # [L, G]: cluster on GPU g
    return np.stack([ctraffic[li][np.ix_(inv[li], inv[li + 1])] for li in range(ctraffic.shape[0])])


def boundary_costs(mapping: np.ndarray, ctraffic: np.ndarray, bandwidth: np.ndarray) -> np.ndarray:
    """``[L-1]`` slowest-link cost ``M_l`` of every boundary."""
    if ctraffic.shape[0] == 0:
        return np.zeros(0)
    t = gpu_traffic(mapping, ctraffic)
    off = ~np.eye(bandwidth.shape[0], dtype=bool)
    return (t[:, off] / bandwidth[off][None, :]).max(axis=1)


def lower_bounds(ctraffic: np.ndarray, bandwidth: np.ndarray) -> np.ndarray:
    """``[L-1]`` lower bound on ``M_l`` that holds for every pair of mappings.

    The largest of: (a) traffic that cannot stay local (total minus a maximum-weight cluster matching,
    by linear assignment) over the sum of all link bandwidths; (b) per cluster, its row (column) total minus
    its largest entry must leave its GPU over links whose bandwidths sum to at most the largest out (in)
    bandwidth of any GPU; (c) per cluster, its second largest entry sits alone on some link.
    """
    g = bandwidth.shape[0]
    off = ~np.eye(g, dtype=bool)
    if g < 2 or ctraffic.shape[0] == 0:
        return np.zeros(ctraffic.shape[0])
    b_sum = bandwidth[off].sum()
    b_out = np.where(off, bandwidth, 0).sum(axis=1).max()
    b_in = np.where(off, bandwidth, 0).sum(axis=0).max()
    b_max = bandwidth[off].max()
    out = np.empty(ctraffic.shape[0])
    for li, c in enumerate(ctraffic):
        r, k = linear_sum_assignment(c, maximize=True)
        a = (c.sum() - c[r, k].sum()) / b_sum
        srt_r = np.sort(c, axis=1)
        srt_c = np.sort(c, axis=0)
        b1 = (c.sum(axis=1) - srt_r[:, -1]).max() / b_out
        b2 = (c.sum(axis=0) - srt_c[-1, :]).max() / b_in
        c3 = max(srt_r[:, -2].max(), srt_c[-2, :].max()) / b_max
        out[li] = max(a, b1, b2, c3)
    return out


def memory_target(sizes: np.ndarray) -> tuple[int, int]:
    """``(floor, ceil)`` of ``E L / G``, the experts every GPU should hold over the model."""
    total, g = int(sizes.sum()), sizes.shape[1]
    return total // g, -(-total // g)


def memory_cap(sizes: np.ndarray, relaxed: bool) -> int:
    """Most experts a GPU may hold over the model: ``ceil(E L / G)``, or relaxed by one layer's spread of
    cluster sizes (``max - min``, at least 1), which is a real relaxation even when G divides ``E L``."""
    hi = memory_target(sizes)[1]
    if not relaxed:
        return hi
    return hi + max(1, int(sizes.max() - sizes.min()))


def memory_per_gpu(mapping: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """``[G]`` experts each GPU holds over all layers."""
    out = np.zeros(sizes.shape[1], dtype=np.int64)
    for li in range(sizes.shape[0]):
        np.add.at(out, mapping[li], sizes[li].astype(np.int64))
    return out


def memory_violation(mapping: np.ndarray, sizes: np.ndarray, relaxed: bool) -> int:
    """Experts above (and, unless relaxed, below) the memory target, summed over GPUs."""
    lo = memory_target(sizes)[0]
    m = memory_per_gpu(mapping, sizes)
    over = np.clip(m - memory_cap(sizes, relaxed), 0, None).sum()
    under = 0 if relaxed else np.clip(lo - m, 0, None).sum()
    return int(over + under)


def greedy_chain(ctraffic: np.ndarray, num_layers: int) -> np.ndarray:
    """Layer 0 on the identity; each next layer by linear assignment, keeping the most traffic GPU-local."""
    g = ctraffic.shape[1] if ctraffic.size else 0
    g = g or 1
    mapping = np.empty((num_layers, g), dtype=np.int64)
    mapping[0] = np.arange(g)
    for li in range(num_layers - 1):
        inv = _inverse(mapping[li : li + 1])[0]
        gain = ctraffic[li][inv].T  # [c2, gpu]: traffic from the cluster already on that GPU
        rows, cols = linear_sum_assignment(gain, maximize=True)
        mapping[li + 1, rows] = cols
    return mapping


def random_mapping(num_layers: int, num_gpus: int, seed: int) -> np.ndarray:
    """An independent random permutation per layer (``default_rng([seed, 2, l])``)."""
    return np.stack([np.random.default_rng([seed, 2, li]).permutation(num_gpus) for li in range(num_layers)])


@dataclass
class Stage2Result:
    """The mapping ``[L, G]`` and its report (JSON-ready)."""

    mapping: np.ndarray
    report: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Stage2Problem:
    """What every stage 2 method works on.

    Attributes:
        ctraffic: ``C [L-1, G, G]`` cluster-to-cluster traffic between consecutive layers.
        sizes: ``[L, G]`` experts per cluster.
        bandwidth: ``B [G, G]`` GB/s.
        options: solver settings (gap, threads, solver).
        tight: beyond the paper's path: ``moetuner_bounds.tight_bounds`` join the per-boundary bounds, the
            chain search (``moetuner_chain``) replaces the decomposition for ``G! <= 120`` GPUs, and the
            joint ILP breaks the node symmetry of a two-level bandwidth (``MoETuner.stage2_bound: tight``).
    """

    ctraffic: np.ndarray
    sizes: np.ndarray
    bandwidth: np.ndarray
    options: milp.SolverOptions
    tight: bool = False

    @property
    def num_layers(self) -> int:
        return int(self.sizes.shape[0])

    @property
    def num_gpus(self) -> int:
        return int(self.sizes.shape[1])

    def costs(self, mapping: np.ndarray) -> np.ndarray:
        """``[L-1]`` slowest-link cost of every boundary."""
        return boundary_costs(mapping, self.ctraffic, self.bandwidth)

    def cost(self, mapping: np.ndarray) -> float:
        return float(self.costs(mapping).sum())

    def violation(self, mapping: np.ndarray, relaxed: bool) -> int:
        return memory_violation(mapping, self.sizes, relaxed)

    def key(self, mapping: np.ndarray, relaxed: bool) -> tuple[int, float]:
        """(memory violation, total cost): what the descent lowers lexicographically."""
        return self.violation(mapping, relaxed), self.cost(mapping)


def joint_size(ctraffic: np.ndarray) -> int:
    """Product variables the joint ILP needs: ``G (G - 1) * nnz(C)``."""
    g = ctraffic.shape[1]
    return int(g * (g - 1) * np.count_nonzero(ctraffic))


def joint_ilp(
    problem: Stage2Problem, deadline: Deadline, relaxed: bool, warm: np.ndarray | None
) -> tuple[np.ndarray | None, milp.SolveResult]:
    """The paper's stage 2 ILP over all layers; returns the mapping (or ``None``) and the solve report.

    Layer 0's mapping is fixed to the identity when every off-diagonal bandwidth is equal (any GPU
    relabelling is then a symmetry), which removes ``G!`` equivalent solutions; with ``problem.tight`` and a
    two-level bandwidth, layer 0 is put in the canonical form of ``node_canonical`` instead (GPUs inside a node
    and equal nodes are interchangeable). Stops by ``deadline``, model building included.
    """
    ctraffic, sizes, bandwidth = problem.ctraffic, problem.sizes, problem.bandwidth
    num_layers, g = sizes.shape
    off = ~np.eye(g, dtype=bool)
    symmetric = bool(np.allclose(bandwidth[off], bandwidth[off][0]))
    prob = pulp.LpProblem("moetuner_stage2", pulp.LpMinimize)
    y = {
        (li, c, gg): prob.add_variable(f"y_{li}_{c}_{gg}", cat=pulp.LpBinary)
        for li in range(num_layers)
        for c in range(g)
        for gg in range(g)
    }
    m = [prob.add_variable(f"M_{li}", lowBound=0) for li in range(num_layers - 1)]
    prob += pulp.lpSum(m)
    _one_to_one_rows(prob, y, num_layers, g, symmetric)
    _memory_rows(prob, y, sizes, relaxed)
    levels = two_level(bandwidth) if problem.tight and not symmetric else None
    if levels is not None:
        _node_symmetry_rows(prob, y, levels[0])
        warm = None if warm is None else node_canonical(warm, levels[0])
    z = _link_rows(prob, y, m, ctraffic, bandwidth)
    use_warm = warm is not None and not (symmetric and not np.array_equal(warm[0], np.arange(g)))
    if use_warm:
        _warm_start(y, z, m, warm, ctraffic, bandwidth)
    res = milp.solve(prob, problem.options, deadline, warm_start=use_warm)
    if not res.has_solution:
        return None, res
    mapping = np.full((num_layers, g), -1, dtype=np.int64)
    for (li, c, gg), var in y.items():
        if (var.varValue or 0) > 0.5:
            mapping[li, c] = gg
    if (mapping < 0).any() or any(len(set(row.tolist())) != g for row in mapping):
        res.notes.append("solver returned a non-integral mapping; discarded")
        return None, res
    return mapping, res


def _one_to_one_rows(prob: pulp.LpProblem, y: dict, num_layers: int, g: int, symmetric: bool) -> None:
    """Every cluster on one GPU and every GPU one cluster, per layer; layer 0 fixed when ``symmetric``."""
    for li in range(num_layers):
        for c in range(g):
            prob += pulp.lpSum(y[li, c, gg] for gg in range(g)) == 1, f"cl_{li}_{c}"
        for gg in range(g):
            prob += pulp.lpSum(y[li, c, gg] for c in range(g)) == 1, f"gpu_{li}_{gg}"
    if symmetric:
        for c in range(g):
            y[0, c, c].lowBound = 1


def node_canonical(mapping: np.ndarray, node: np.ndarray) -> np.ndarray:
    """``mapping [L, G]`` relabelled (one GPU permutation for all layers, keeping ``node [G]``'s partition)
    so that layer 0 is canonical: inside every node the GPUs, in index order, hold increasing clusters, and
    the nodes, ordered by their first GPU, hold increasing smallest clusters. Cost and memory are unchanged
    when the bandwidth is two-level with these nodes."""
    members = [np.flatnonzero(node == n) for n in range(int(node.max()) + 1)]
    on = _inverse(mapping[:1])[0]  # cluster on each GPU, layer 0
    groups = sorted((sorted(on[gpus].tolist()) for gpus in members), key=lambda cl: cl[0])
    relabel = np.empty(node.shape[0], dtype=np.int64)  # old GPU -> new GPU
    for gpus, clusters in zip(members, groups, strict=True):
        for new_gpu, cl in zip(gpus.tolist(), clusters, strict=True):
            relabel[mapping[0, cl]] = new_gpu
    return relabel[mapping]


def _node_symmetry_rows(prob: pulp.LpProblem, y: dict, node: np.ndarray) -> None:
    """Layer 0 in ``node_canonical``'s form: ``v_g = sum_c c y[0, c, g]`` increases along each node's GPUs
    and along the nodes' first GPUs."""
    g = node.shape[0]
    v = [pulp.LpAffineExpression([(y[0, c, gg], float(c)) for c in range(1, g)]) for gg in range(g)]
    members = [np.flatnonzero(node == n).tolist() for n in range(int(node.max()) + 1)]
    chains = [*members, [gpus[0] for gpus in members]]
    for chain in chains:
        for a, b in zip(chain[:-1], chain[1:], strict=True):
            prob += v[b] - v[a] >= 1, f"sym_{a}_{b}"


def _memory_rows(prob: pulp.LpProblem, y: dict, sizes: np.ndarray, relaxed: bool) -> None:
    """Experts per GPU over the model: exactly the target, or within [lo, cap] (``memory_target``)."""
    num_layers, g = sizes.shape
    lo, hi = memory_target(sizes)
    for gg in range(g):
        mem = pulp.LpAffineExpression(
            [(y[li, c, gg], float(sizes[li, c])) for li in range(num_layers) for c in range(g)]
        )
        if relaxed or lo != hi:
            prob += mem <= memory_cap(sizes, relaxed), f"mem_hi_{gg}"
            if not relaxed:
                prob += mem >= lo, f"mem_lo_{gg}"
        else:
            prob += mem == hi, f"mem_{gg}"


def _link_rows(
    prob: pulp.LpProblem, y: dict, m: list, ctraffic: np.ndarray, bandwidth: np.ndarray
) -> dict[tuple[int, int, int, int, int], pulp.LpVariable]:
    """``M_l >= sum over cluster pairs on link (g1, g2) of C / B``, with the products linearised by
    ``z >= y1 + y2 - 1``; returns the ``z`` variables by ``(layer, c1, g1, c2, g2)``."""
    g = bandwidth.shape[0]
    z = {}
    for li in range(ctraffic.shape[0]):
        c1s, c2s = np.nonzero(ctraffic[li])
        link_terms: dict[tuple[int, int], list] = {}
        for c1, c2 in zip(c1s.tolist(), c2s.tolist(), strict=True):
            w = float(ctraffic[li, c1, c2])
            for g1 in range(g):
                for g2 in range(g):
                    if g1 == g2:
                        continue
                    var = prob.add_variable(f"z_{li}_{c1}_{g1}_{c2}_{g2}", lowBound=0)
                    z[li, c1, g1, c2, g2] = var
                    prob += var - y[li, c1, g1] - y[li + 1, c2, g2] >= -1
                    link_terms.setdefault((g1, g2), []).append((var, w / float(bandwidth[g1, g2])))
        for (g1, g2), terms in link_terms.items():
            prob += m[li] - pulp.LpAffineExpression(terms) >= 0, f"link_{li}_{g1}_{g2}"
    return z


def _warm_start(
    y: dict, z: dict, m: list, warm: np.ndarray, ctraffic: np.ndarray, bandwidth: np.ndarray
) -> None:
    """Initial values of every variable from the mapping ``warm [L, G]`` (cluster -> GPU)."""
    for (li, c, gg), var in y.items():
        var.setInitialValue(1 if warm[li, c] == gg else 0)
    for (li, c1, g1, c2, g2), var in z.items():
        var.setInitialValue(1 if warm[li, c1] == g1 and warm[li + 1, c2] == g2 else 0)
    for li, val in enumerate(boundary_costs(warm, ctraffic, bandwidth)):
        m[li].setInitialValue(float(val))


def _improve_layer(
    problem: Stage2Problem, li: int, mapping: np.ndarray, relaxed: bool, deadline: Deadline
) -> np.ndarray | None:
    """Best permutation of layer ``li`` with its neighbours fixed (exact MILP within the gap, by ``deadline``)."""
    sizes = problem.sizes
    num_layers, g = sizes.shape
    inv = _inverse(mapping)
    prob = pulp.LpProblem("moetuner_stage2_layer", pulp.LpMinimize)
    y = {(c, gg): prob.add_variable(f"y_{c}_{gg}", cat=pulp.LpBinary) for c in range(g) for gg in range(g)}
    over = [prob.add_variable(f"over_{gg}", lowBound=0) for gg in range(g)]
    under = [prob.add_variable(f"under_{gg}", lowBound=0) for gg in range(g)]
    terms, scale = [], 1.0
    if li > 0:
        terms.append(_boundary_rows(prob, problem, y, "M_prev", problem.ctraffic[li - 1], inv[li - 1], True))
        scale += _boundary_scale(problem, li - 1)
    if li < num_layers - 1:
        terms.append(_boundary_rows(prob, problem, y, "M_next", problem.ctraffic[li], inv[li + 1], False))
        scale += _boundary_scale(problem, li)
    prob += pulp.lpSum(terms) + 10.0 * scale * pulp.lpSum(over + under)
    for c in range(g):
        prob += pulp.lpSum(y[c, gg] for gg in range(g)) == 1
    for gg in range(g):
        prob += pulp.lpSum(y[c, gg] for c in range(g)) == 1
    lo, hi = memory_target(sizes)[0], memory_cap(sizes, relaxed)
    others = memory_per_gpu(mapping, sizes) - np.bincount(mapping[li], weights=sizes[li], minlength=g).astype(
        int
    )
    for gg in range(g):
        mem = pulp.LpAffineExpression([(y[c, gg], float(sizes[li, c])) for c in range(g)])
        prob += mem - over[gg] <= hi - int(others[gg])
        if not relaxed:
            prob += mem + under[gg] >= lo - int(others[gg])
    for (c, gg), var in y.items():
        var.setInitialValue(1 if mapping[li, c] == gg else 0)
    # Solved to (near) optimality: the penalty terms dominate the objective, so a relative gap would let
    # the solver stop with memory slack left.
    options = replace(problem.options, gap=1e-6)
    res = milp.solve(prob, options, deadline, warm_start=False)
    if not res.has_solution:
        return None
    row = np.full(g, -1, dtype=np.int64)
    for (c, gg), var in y.items():
        if (var.varValue or 0) > 0.5:
            row[c] = gg
    return row if (row >= 0).all() and len(set(row.tolist())) == g else None


def _boundary_scale(problem: Stage2Problem, boundary: int) -> float:
    """The largest value a boundary's link term can take: its traffic over the slowest link."""
    g = problem.bandwidth.shape[0]
    return float(problem.ctraffic[boundary].sum() / problem.bandwidth[~np.eye(g, dtype=bool)].min())


def _boundary_rows(
    prob: pulp.LpProblem,
    problem: Stage2Problem,
    y: dict,
    name: str,
    traffic: np.ndarray,
    fixed: np.ndarray,
    incoming: bool,
) -> pulp.LpVariable:
    """``M >= traffic on link (g1, g2) / B`` for every link, with the neighbouring layer's clusters fixed
    (``fixed[g]``: its cluster on GPU g). ``incoming``: the boundary from the previous layer into this one
    (the free layer receives), else from this layer into the next (the free layer sends). Returns ``M``."""
    g, bandwidth = problem.bandwidth.shape[0], problem.bandwidth
    m = prob.add_variable(name, lowBound=0)
    for a in range(g):
        weights = traffic[fixed[a]] if incoming else traffic[:, fixed[a]]
        for b in range(g):
            if a == b:
                continue
            g1, g2 = (a, b) if incoming else (b, a)
            expr = pulp.LpAffineExpression(
                [(y[c, b], float(weights[c] / bandwidth[g1, g2])) for c in range(g)]
            )
            prob += m - expr >= 0
    return m


def repair_memory(mapping: np.ndarray, sizes: np.ndarray, max_steps: int = 1000) -> np.ndarray:
    """Move single experts of memory from GPUs over the target to GPUs under it along swap paths.

    A unit edge ``a -> b`` exists in layer l when the cluster on a is one expert larger than the cluster on
    b; swapping them moves one expert of memory. A breadth-first search finds a path from the fullest GPU to
    an emptier one (single-layer steps alone cannot do this when the surplus must cross a GPU at the target).
    Returns the repaired mapping (unchanged where no path exists).
    """
    cur = mapping.copy()
    num_layers, g = sizes.shape
    lo, hi = memory_target(sizes)
    for _ in range(max_steps):
        mem = memory_per_gpu(cur, sizes)
        src = int(np.argmax(mem))
        if mem[src] <= hi and mem.min() >= lo:
            break
        inv = _inverse(cur)
        held = sizes[np.arange(num_layers)[:, None], inv]  # [L, G] size of the cluster on each GPU
        diff = held[:, :, None] - held[:, None, :]  # [L, a, b]
        edges = (diff == 1).any(axis=0)
        want = mem < (hi if mem[src] > hi else lo) if mem[src] > hi else mem < lo
        prev = {src: -1}
        queue = [src]
        dst = -1
        while queue and dst < 0:
            a = queue.pop(0)
            for b in np.flatnonzero(edges[a]).tolist():
                if b not in prev:
                    prev[b] = a
                    if want[b]:
                        dst = b
                        break
                    queue.append(b)
        if dst < 0:
            break
        path = [dst]
        while prev[path[-1]] >= 0:
            path.append(prev[path[-1]])
        path.reverse()
        for a, b in zip(
            path[:-1], path[1:], strict=True
        ):  # first move a -> b ... the order keeps sizes valid
            inv = _inverse(cur)
            held = sizes[np.arange(num_layers)[:, None], inv]
            layers = np.flatnonzero(held[:, a] - held[:, b] == 1)
            if layers.size == 0:
                return cur
            li = int(layers[0])
            ca, cb = inv[li, a], inv[li, b]
            cur[li, ca], cur[li, cb] = b, a
    return cur


def improve(
    problem: Stage2Problem, mapping: np.ndarray, relaxed: bool, deadline: Deadline, max_sweeps: int = 4
) -> tuple[np.ndarray, int]:
    """Block-coordinate descent over layers until no layer improves, ``max_sweeps`` or ``deadline``.

    A step is kept only if it lowers (memory violation, total cost) lexicographically. Returns the mapping
    and the number of layer steps that were kept.
    """
    num_layers = problem.num_layers
    cur = mapping.copy()
    key = problem.key(cur, relaxed)
    kept = 0
    for _ in range(max_sweeps):
        changed = False
        for li in range(num_layers):
            left = deadline.left()
            if left <= 0.05:
                return cur, kept
            limit = min(left, max(0.5, left / max(1, num_layers)))
            row = _improve_layer(problem, li, cur, relaxed, Deadline.after(limit))
            if row is None:
                continue
            cand = cur.copy()
            cand[li] = row
            ck = problem.key(cand, relaxed)
            if ck[0] < key[0] or (ck[0] == key[0] and ck[1] < key[1] * (1 - 1e-12) - 1e-12):
                cur, key, changed = cand, ck, True
                kept += 1
        if not changed:
            break
    return cur, kept


def solve(
    problem: Stage2Problem, method: str, deadline: Deadline, max_joint_vars: int, seed: int
) -> Stage2Result:
    """Stage 2 with ``method`` in ``ilp`` (joint ILP when it fits ``max_joint_vars`` and the decomposition has
    not already proven the gap, else decomposition), ``decomposed``, ``greedy`` or ``random`` (ablations;
    memory not enforced), by ``deadline``.

    Returns the mapping and a report: method used, status, objective (``sum_l M_l``), bound, gap,
    solve_time_s, size, memory (mode ``exact``/``relaxed``/``not_enforced``, per-GPU min/max), notes.
    """
    t_start = time.monotonic()
    lb = lower_bounds(problem.ctraffic, problem.bandwidth)
    if problem.tight:
        lb = np.maximum(lb, tight_bounds(problem.ctraffic, problem.bandwidth))
    report: dict = {"notes": []}
    if method == "random":
        mapping = random_mapping(problem.num_layers, problem.num_gpus, seed)
        report.update(method="random", status="heuristic", _relaxed=None)
    elif method == "greedy":
        mapping = greedy_chain(problem.ctraffic, problem.num_layers)
        report.update(method="greedy", status="heuristic", _relaxed=None)
    else:
        size = joint_size(problem.ctraffic)
        report["joint_product_variables"] = size
        use_joint = method == "ilp" and size <= max_joint_vars
        if method == "ilp" and not use_joint:
            report["notes"].append(
                f"joint ILP needs {size} product variables > max_joint_vars={max_joint_vars}; decomposed"
            )
        mapping, report_solve = _ilp_like(problem, deadline, use_joint, lb, report["notes"])
        report.update(report_solve)
    _finish_report(problem, mapping, report, lb, deadline)
    report["wall_time_s"] = round(time.monotonic() - t_start, 6)
    return Stage2Result(mapping, report)


def _finish_report(
    problem: Stage2Problem, mapping: np.ndarray, report: dict, lb: np.ndarray, deadline: Deadline
) -> None:
    """Objective, bound, gap, memory and status of ``mapping`` into ``report`` (in place)."""
    objective = problem.cost(mapping)
    relaxed = report.pop("_relaxed")
    mem_mode = "not_enforced" if relaxed is None else "relaxed" if relaxed else "exact"
    bound = float(lb.sum()) if relaxed is None else float(max(lb.sum(), report.get("solver_bound") or 0.0))
    bound = min(bound, objective)
    mem = memory_per_gpu(mapping, problem.sizes)
    lo = memory_target(problem.sizes)[0]
    hi = memory_cap(problem.sizes, bool(relaxed))
    report.update(
        objective=objective,
        bound=bound,
        gap=milp.relative_gap(objective, bound),
        per_boundary_bound_sum=float(lb.sum()),
        memory={"mode": mem_mode, "target": [lo, hi], "min": int(mem.min()), "max": int(mem.max())},
    )
    if mem_mode != "not_enforced" and (mem.max() > hi or (mem_mode == "exact" and mem.min() < lo)):
        report["notes"].append(f"memory constraint not met: per-GPU experts {mem.min()}..{mem.max()}")
        report["memory"]["met"] = False
    if report.get("status") not in ("heuristic", milp.NO_SOLUTION):
        met = report["memory"].get("met", True)
        report["status"] = milp.placement_status(report["gap"], problem.options.gap, deadline, met)


def _decompose(problem: Stage2Problem, deadline: Deadline, notes: list[str]) -> tuple[np.ndarray, bool, int]:
    """Greedy chain (``tight``: bottleneck chain and costed swaps), memory repair, coordinate descent; relaxes
    memory when the exact target is not met.

    Returns the mapping, whether memory was relaxed, and the number of layer steps kept.
    """
    if problem.tight:  # the least slowest link per layer, then memory by the cheapest swaps
        args = (problem.ctraffic, problem.sizes, problem.bandwidth, memory_target(problem.sizes))
        start = best_start(*args, deadline, lambda m: problem.key(m, relaxed=False))
    else:
        start = greedy_chain(problem.ctraffic, problem.num_layers)
    mapping = repair_memory(start, problem.sizes)
    sweeps = TIGHT_SWEEPS if problem.tight else 4
    mapping, kept = improve(problem, mapping, False, deadline, sweeps)
    relaxed = False
    if problem.violation(mapping, relaxed=False) > 0:
        relaxed = True
        notes.append(
            f"memory: E L / G per GPU not reached by the decomposition; relaxed to at most "
            f"{memory_cap(problem.sizes, True)} experts per GPU"
        )
        mapping, k2 = improve(problem, mapping, True, deadline, sweeps)
        kept += k2
    return mapping, relaxed, kept


def _chain(
    problem: Stage2Problem, deadline: Deadline, notes: list[str]
) -> tuple[np.ndarray, bool, float] | None:
    """The chain search (``tight`` and ``G! <= MAX_PERMUTATIONS`` only): the mapping, whether memory was
    relaxed (only when the exact target was proven impossible) and a bound valid for every mapping that
    meets the memory window used; ``None`` when it does not apply or found nothing in time."""
    g = problem.num_gpus
    if not problem.tight or math.factorial(g) > MAX_PERMUTATIONS:
        return None
    args = (problem.ctraffic, problem.sizes, problem.bandwidth)
    res = solve_chain(*args, memory_target(problem.sizes), deadline)
    relaxed = False
    if res.mapping is None and res.exact:
        relaxed = True
        cap = memory_cap(problem.sizes, True)
        notes.append(
            f"memory: E L / G per GPU is infeasible (chain search proved it); relaxed to at most {cap}"
        )
        res = solve_chain(*args, (0, cap), deadline)
    if res.mapping is None:
        notes.append("chain search found no mapping in time; decomposed")
        return None
    kind = "optimal" if res.exact else f"best of {res.max_states} states per layer, Lagrangian bound"
    notes.append(f"chain search over {math.factorial(g)} permutations per layer: {kind}")
    return res.mapping, relaxed, float(res.bound)


def _ilp_like(
    problem: Stage2Problem, deadline: Deadline, use_joint: bool, lb: np.ndarray, notes: list[str]
) -> tuple[np.ndarray, dict]:
    """The decomposition, then the joint ILP warm-started from it unless the decomposition is proven within
    the gap by the per-boundary bounds ``lb``."""
    # The decomposition also gives the joint ILP its warm start; give it a share of the time.
    share = 0.3 if use_joint else 1.0
    dec_deadline = deadline.share_of_left(share)
    chain = _chain(problem, dec_deadline, notes)
    if chain is not None:
        mapping, relaxed, chain_bound = chain
        out: dict = {"method": "chain", "status": milp.TIME_LIMIT, "chain_bound": chain_bound}
    else:
        mapping, relaxed, kept = _decompose(problem, dec_deadline, notes)
        chain_bound = None
        out = {"method": "decomposed", "status": milp.TIME_LIMIT, "decomposition_steps_kept": kept}
    dec_gap = milp.relative_gap(problem.cost(mapping), max(float(lb.sum()), chain_bound or 0.0))
    proven = (
        dec_gap is not None and dec_gap <= problem.options.gap and problem.violation(mapping, relaxed) == 0
    )
    if proven and use_joint:
        what = "decomposition" if chain is None else "chain search"
        notes.append(f"{what} within {dec_gap:.4f} of the per-boundary bound: joint ILP skipped")
    if not use_joint or proven:
        return mapping, out | {"_relaxed": relaxed, "solver_bound": chain_bound}
    warm = mapping if problem.violation(mapping, relaxed) == 0 else None
    joint, res = joint_ilp(problem, deadline, relaxed, warm)
    if res.status == milp.INFEASIBLE and not relaxed:
        relaxed = True
        notes.append(
            f"memory: E L / G per GPU is infeasible (solver proved it); relaxed to at most "
            f"{memory_cap(problem.sizes, True)} experts per GPU"
        )
        joint, res = joint_ilp(problem, deadline, True, warm)
    notes.extend(res.notes)
    out.update(solve_time_s=res.solve_time_s, size=res.to_info()["size"], solver_status=res.status)
    if joint is not None and (
        problem.violation(mapping, relaxed) > 0 or problem.cost(joint) <= problem.cost(mapping) + 1e-9
    ):
        mapping = joint
        out.update(method="joint_ilp", status=res.status)
    else:
        notes.append(f"joint ILP ended '{res.status}' without a better mapping; kept the decomposition's")
    sb = res.bound if res.bound is not None and math.isfinite(res.bound) else None
    if chain_bound is not None:
        sb = max(sb or 0.0, chain_bound)
    out["solver_bound"] = sb  # valid for the joint problem whichever mapping is kept
    out["_relaxed"] = relaxed
    return mapping, out
