"""A start for MoETuner's stage 2 decomposition on many GPUs (beyond the paper; ``stage2_bound: tight``).

Notation as ``moetuner_stage2``: ``C [L-1, G, G]``, ``sizes [L, G]``, ``B [G, G]``, ``mapping [L, G]``
(cluster -> GPU). Two steps, tried from several starts (``best_start``):

- ``bottleneck_chain``: layer 0 on the identity, then each next layer placed to minimise its boundary's
  slowest link exactly (a bottleneck assignment: bisection over the link costs, a perfect matching per
  test), or within ``slack`` of it, ties broken towards memory balance (``tie``: big clusters to GPUs with
  little memory, or the squared distance to the memory a GPU should hold after that layer);
- ``repair_memory_costed``: single swaps of two GPUs' clusters in one layer, each time the one that removes
  memory violation (experts outside ``[lo, hi]`` per GPU) at the least added cost per expert; when none
  removes any, the swap that lowers the cost most without adding violation; until neither exists or the
  deadline.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_bipartite_matching

from moe.placement.deadline import Deadline


def _inverse_bandwidth(bandwidth: np.ndarray) -> np.ndarray:
    off = ~np.eye(bandwidth.shape[0], dtype=bool)
    return np.where(off, 1.0 / np.where(off, bandwidth, 1.0), 0.0)


def bottleneck_threshold(cost: np.ndarray) -> float:
    """Smallest ``t`` such that a perfect matching uses only entries ``cost [G, G] <= t``."""
    vals = np.unique(cost)
    lo, hi = 0, vals.size - 1
    while lo < hi:
        mid = (lo + hi) // 2
        match = maximum_bipartite_matching(csr_matrix(cost <= vals[mid]), perm_type="column")
        if (match >= 0).all():
            hi = mid
        else:
            lo = mid + 1
    return float(vals[lo])


TIES = ("product", "square")
# (slack, tie) of the starts tried by ``best_start``
STARTS = ((0.0, "product"), (0.0, "square"), (0.1, "square"), (0.2, "product"), (0.2, "square"))


def bottleneck_chain(
    ctraffic: np.ndarray, sizes: np.ndarray, bandwidth: np.ndarray, slack: float = 0.0, tie: str = "product"
) -> np.ndarray:
    """``mapping [L, G]``: each layer after the first at most ``1 + slack`` times the least slowest link
    given the one before; ``tie`` in ``TIES`` (see the module docstring)."""
    if tie not in TIES:
        raise ValueError(f"tie: expected one of {list(TIES)}, got {tie!r}")
    num_layers, g = sizes.shape
    inv_b = _inverse_bandwidth(bandwidth)
    mapping = np.empty((num_layers, g), dtype=np.int64)
    mapping[0] = np.arange(g)
    mem = sizes[0].astype(float)
    share = np.cumsum(sizes.sum(axis=1)) / g  # [L] experts a GPU should hold after each layer
    for li in range(num_layers - 1):
        on = np.argsort(mapping[li])  # cluster on each GPU
        cost = (ctraffic[li][on][:, :, None] * inv_b[:, None, :]).max(axis=0)  # [c2, g2]
        allowed = cost <= bottleneck_threshold(cost) * (1 + slack)
        if tie == "square":
            tie_cost = (mem[None, :] + sizes[li + 1][:, None] - share[li + 1]) ** 2
        else:
            tie_cost = sizes[li + 1][:, None] * mem[None, :]  # big clusters to GPUs with little memory
        rows, cols = linear_sum_assignment(np.where(allowed, tie_cost, tie_cost.max() * g + 1.0))
        mapping[li + 1, rows] = cols
        mem[cols] += sizes[li + 1][rows]
    return mapping


def _link_matrix(mapping: np.ndarray, ctraffic: np.ndarray, inv_b: np.ndarray, li: int) -> np.ndarray:
    """``[G, G]`` boundary ``li``'s traffic per GB/s between GPUs."""
    on_a, on_b = np.argsort(mapping[li]), np.argsort(mapping[li + 1])
    return ctraffic[li][np.ix_(on_a, on_b)] * inv_b


def _swap_costs(mapping: np.ndarray, ctraffic: np.ndarray, inv_b: np.ndarray, li: int) -> np.ndarray:
    """``[G, G]``: the change of ``M_{l-1} + M_l`` when GPUs a and b exchange their layer-``li`` clusters."""
    num_layers, g = mapping.shape
    out = np.zeros((g, g))
    if li < num_layers - 1:  # rows a, b of boundary li change
        on_a, on_b = np.argsort(mapping[li]), np.argsort(mapping[li + 1])
        t = ctraffic[li][np.ix_(on_a, on_b)]  # [sender GPU, receiver GPU]
        new_row = (t[None, :, :] * inv_b[:, None, :]).max(axis=2)  # [a, b]: row b's traffic sent from a
        out += _new_max(t * inv_b, new_row, axis=1)
    if li > 0:  # columns a, b of boundary li - 1 change
        on_a, on_b = np.argsort(mapping[li - 1]), np.argsort(mapping[li])
        t = ctraffic[li - 1][np.ix_(on_a, on_b)]
        new_col = (t.T[None, :, :] * inv_b.T[:, None, :]).max(axis=2)  # [a, b]: column b received at a
        out += _new_max(t * inv_b, new_col, axis=0)
    return out


def _new_max(w: np.ndarray, moved: np.ndarray, axis: int) -> np.ndarray:
    """``[G, G]`` change of ``max w`` when lines a and b (rows: ``axis=1``) take maxima ``moved[a, b]`` and
    ``moved[b, a]``; the other lines keep theirs."""
    line = w.max(axis=axis)
    g = line.size
    top = np.argsort(line)[::-1][:3]
    # the largest line maximum outside {a, b}: the first of the top three that is neither
    first, second, third = (line[top[i]] if i < top.size else 0.0 for i in range(3))
    idx = np.arange(g)
    is0 = (idx[:, None] == top[0]) | (idx[None, :] == top[0])
    is1 = (idx[:, None] == top[1]) | (idx[None, :] == top[1]) if top.size > 1 else np.zeros((g, g), bool)
    rest = np.where(is0, np.where(is1, third, second), first)
    return np.maximum(rest, np.maximum(moved, moved.T)) - line.max()


def _violation(mem: np.ndarray, lo: int, hi: int) -> np.ndarray:
    return np.clip(mem - hi, 0, None) + np.clip(lo - mem, 0, None)


def repair_memory_costed(
    mapping: np.ndarray,
    ctraffic: np.ndarray,
    sizes: np.ndarray,
    bandwidth: np.ndarray,
    window: tuple[int, int],
    deadline: Deadline,
) -> np.ndarray:
    """Swaps that lower the memory violation at the least added cost per expert (see the module docstring)."""
    cur = mapping.copy()
    num_layers, g = sizes.shape
    inv_b = _inverse_bandwidth(bandwidth)
    lo, hi = window
    dcost = np.stack([_swap_costs(cur, ctraffic, inv_b, li) for li in range(num_layers)])  # [L, a, b]
    while not deadline.expired():
        mem = np.zeros(g, dtype=np.int64)
        for li in range(num_layers):
            np.add.at(mem, cur[li], sizes[li])
        viol = _violation(mem, lo, hi)
        held = sizes[np.arange(num_layers)[:, None], np.argsort(cur, axis=1)]  # [L, G] size on each GPU
        moved = held[:, None, :] - held[:, :, None]  # [L, a, b]: experts a gains by taking b's cluster
        new_a = _violation(mem[None, :, None] + moved, lo, hi)
        new_b = _violation(mem[None, None, :] - moved, lo, hi)
        gain = viol[None, :, None] + viol[None, None, :] - new_a - new_b  # [L, a, b] violation removed
        score = np.where(gain > 0, dcost / np.maximum(gain, 1), np.inf)
        if not (gain > 0).any():  # memory as good as single swaps get it: lower the cost, keep the violation
            score = np.where((gain == 0) & (dcost < -1e-9 * max(1.0, float(dcost.max()))), dcost, np.inf)
        best = np.unravel_index(int(np.argmin(score)), score.shape)
        if not np.isfinite(score[best]):
            break
        li, a, b = (int(x) for x in best)
        ca, cb = np.flatnonzero(cur[li] == a)[0], np.flatnonzero(cur[li] == b)[0]
        cur[li, ca], cur[li, cb] = b, a
        for lj in range(max(0, li - 1), min(num_layers, li + 2)):
            dcost[lj] = _swap_costs(cur, ctraffic, inv_b, lj)
    return cur


def best_start(
    ctraffic: np.ndarray,
    sizes: np.ndarray,
    bandwidth: np.ndarray,
    window: tuple[int, int],
    deadline: Deadline,
    key: Callable[[np.ndarray], tuple[int, float]],
) -> np.ndarray:
    """The best, by ``key`` (the caller's (memory violation, cost) of a mapping ``[L, G]``), of
    ``bottleneck_chain`` for every ``STARTS`` entry followed by ``repair_memory_costed``; the first one always
    runs, the others while time is left."""
    best, best_key = None, None
    for slack, tie in STARTS:
        if best is not None and deadline.expired():
            break
        start = bottleneck_chain(ctraffic, sizes, bandwidth, slack, tie)
        cand = repair_memory_costed(start, ctraffic, sizes, bandwidth, window, deadline)
        k = key(cand)
        if best_key is None or k < best_key:
            best, best_key = cand, k
    return best
