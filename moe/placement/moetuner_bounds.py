"""Tighter lower bounds on MoETuner's stage 2 cost, per boundary, valid for every mapping (beyond the paper).

Notation as ``moetuner_stage2``: ``C [G, G]`` cluster pair counts of one boundary (cluster c1 of layer l,
cluster c2 of layer l+1), ``B [G, G]`` GB/s (diagonal ignored: a co-located pair costs nothing), a mapping puts
each layer's G clusters one-to-one on the G GPUs, and the boundary's cost is its slowest link
``M = max over pairs on different GPUs of C / B`` (pair counts per GB/s).

- ``sorted_bound`` (any ``B``): the mapping sends the ``G^2`` cluster pairs one-to-one onto the ``G^2`` GPU
  pairs (``G`` of them local), so ``M`` is at least the best bottleneck pairing of the two sorted lists.
- ``threshold_bound`` (two-level ``B``: ``hi`` GB/s inside a node, ``lo`` across nodes, equal nodes):
  ``M <= t`` needs every pair with ``C / hi > t`` co-located (these pairs form a matching) and every pair
  with ``C / lo > t`` on one node (so the connected components of those pairs fit into the nodes: at most
  ``gpn`` clusters of each layer each, packed into ``N`` nodes). The smallest ``t`` among the ``C / B``
  values meeting both is the exact optimum of the boundary alone when the packing is decided exactly (a
  small search; when its budget runs out the packing counts as possible, which keeps the bound valid). On
  one node it equals the pairwise bound (c) of ``moetuner_stage2.lower_bounds``.
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

PACK_BUDGET = 20000  # search nodes per packing question; past it, "packable" (the bound stays valid)


def two_level(bandwidth: np.ndarray) -> tuple[np.ndarray, float, float] | None:
    """``(node [G], hi, lo)`` when ``B`` is ``hi`` inside equal-sized nodes and ``lo`` between them (one node:
    ``lo == hi``), else ``None``. Nodes are the classes of GPU pairs at the largest off-diagonal bandwidth."""
    g = bandwidth.shape[0]
    off = ~np.eye(g, dtype=bool)
    vals = np.unique(bandwidth[off])
    if g < 2 or vals.size > 2 or vals[0] <= 0:
        return None
    hi, lo = float(vals[-1]), float(vals[0])
    same = (bandwidth == hi) | ~off
    node = np.full(g, -1, dtype=np.int64)
    for a in range(g):
        if node[a] < 0:
            node[same[a]] = node.max() + 1
    sizes = np.bincount(node)
    if (sizes != sizes[0]).any() or not np.array_equal(same, node[:, None] == node[None, :]):
        return None
    return node, hi, lo


def sorted_bound(ctraffic: np.ndarray, bandwidth: np.ndarray) -> np.ndarray:
    """``[L-1]`` bound: cluster pairs sorted by count against GPU pairs sorted by bandwidth (local first)."""
    g = bandwidth.shape[0]
    off = ~np.eye(g, dtype=bool)
    b = np.sort(np.concatenate([np.full(g, np.inf), bandwidth[off]]))[::-1]  # [G^2] descending
    c = np.sort(ctraffic.reshape(ctraffic.shape[0], -1), axis=1)[:, ::-1]  # [L-1, G^2] descending
    return (c[:, g:] / b[g:]).max(axis=1, initial=0.0) if g > 1 else np.zeros(ctraffic.shape[0])


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Clusters of each layer in every connected component of the bipartite graph ``mask [G, G]``."""
    g = mask.shape[0]
    adj = np.zeros((2 * g, 2 * g), dtype=bool)
    adj[:g, g:] = mask
    adj[g:, :g] = mask.T
    n, label = connected_components(csr_matrix(adj), directed=False)
    return np.bincount(label[:g], minlength=n), np.bincount(label[g:], minlength=n)


def packable(items: list[tuple[int, int]], num_nodes: int, cap: int, budget: int = PACK_BUDGET) -> bool:
    """Whether components ``(a, b)`` (clusters of layer l, of layer l+1) fit into ``num_nodes`` nodes of
    ``cap`` clusters per layer; ``True`` also when the search exceeds ``budget`` nodes (undecided)."""
    items = sorted(items, key=lambda x: -(x[0] + x[1]))
    loads = [[0, 0] for _ in range(num_nodes)]
    left = [budget]

    def place(i: int) -> bool:
        if i == len(items):
            return True
        left[0] -= 1
        if left[0] < 0:
            return True
        tried = set()
        for load in loads:
            key = (load[0], load[1])
            if key in tried or load[0] + items[i][0] > cap or load[1] + items[i][1] > cap:
                continue
            tried.add(key)
            load[0] += items[i][0]
            load[1] += items[i][1]
            ok = place(i + 1)
            load[0] -= items[i][0]
            load[1] -= items[i][1]
            if ok:
                return True
        return False

    return place(0)


def _feasible(ratio_hi: np.ndarray, ratio_lo: np.ndarray, t: float, num_nodes: int, gpn: int) -> bool:
    """Whether the boundary's slowest link can be at most ``t`` (see the module docstring)."""
    forced = ratio_hi > t
    if (forced.sum(axis=1) > 1).any() or (forced.sum(axis=0) > 1).any():
        return False
    if num_nodes == 1:
        return True
    a, b = _components(ratio_lo > t)
    if (a > gpn).any() or (b > gpn).any():
        return False
    return packable([(int(x), int(y)) for x, y in zip(a, b, strict=True) if x + y > 1], num_nodes, gpn)


def threshold_bound(ctraffic: np.ndarray, node: np.ndarray, hi: float, lo: float) -> np.ndarray:
    """``[L-1]`` per-boundary bound for a two-level bandwidth (``node [G]`` of each GPU, ``hi``/``lo`` GB/s
    inside/between nodes): the smallest feasible threshold, by bisection over the ``C / B`` values."""
    num_nodes = int(node.max()) + 1
    gpn = node.shape[0] // num_nodes
    out = np.zeros(ctraffic.shape[0])
    for li, c in enumerate(ctraffic):
        r_hi, r_lo = c / hi, c / lo
        vals = np.unique(np.concatenate([r_hi.ravel(), r_lo.ravel(), [0.0]]))
        a, z = 0, vals.size - 1  # the largest value is always feasible
        while a < z:
            mid = (a + z) // 2
            if _feasible(r_hi, r_lo, float(vals[mid]), num_nodes, gpn):
                z = mid
            else:
                a = mid + 1
        out[li] = vals[a]
    return out


def tight_bounds(ctraffic: np.ndarray, bandwidth: np.ndarray) -> np.ndarray:
    """``[L-1]`` the larger of ``sorted_bound`` and, for a two-level bandwidth, ``threshold_bound``."""
    out = sorted_bound(ctraffic, bandwidth)
    levels = two_level(bandwidth)
    if levels is not None:
        out = np.maximum(out, threshold_bound(ctraffic, *levels))
    return out
