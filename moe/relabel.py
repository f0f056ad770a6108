"""GPU relabelling: the same placement under the GPU numbering that moves the fewest expert copies.

A placement made from scratch numbers its GPUs arbitrarily: two placements that hold the same expert groups
on permuted GPUs would "migrate" nearly every copy. Every permutation that maps nodes to nodes and keeps
each node's ranks together is a symmetry of a homogeneous cluster (every node alike, every rank in a node
alike), so it leaves the placement's quality unchanged while it changes which copies move.
``relabel(new, old, ranks_per_node)`` picks, among those permutations, the one applied to every layer of
``new`` that keeps the most copies where ``old`` has them: for every pair of nodes, the best matching of
their ranks (Hungarian method on the copies the two ranks share, summed over layers), then the best
matching of nodes on those values. The result is exact for node-preserving permutations.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from common.errors import InputError
from moe.placement.base import Placement


def shared_copies(old: Placement, new: Placement) -> np.ndarray:
    """int64 ``[G, G]``: ``[a, b]`` = expert copies that GPU ``a`` holds in ``old`` and GPU ``b`` in ``new``,
    summed over layers."""
    if (old.num_layers, old.num_gpus, old.num_experts) != (new.num_layers, new.num_gpus, new.num_experts):
        raise InputError("relabel: the two placements differ in layers, GPUs or experts")
    g, e = old.num_gpus, old.num_experts
    out = np.zeros((g, g), dtype=np.int64)
    for la, lb in zip(old.assignment, new.assignment, strict=True):
        a = np.zeros((g, e), dtype=np.int64)
        b = np.zeros((g, e), dtype=np.int64)
        for gi in range(g):
            a[gi, la[gi]] = 1
            b[gi, lb[gi]] = 1
        out += a @ b.T
    return out


def best_permutation(shared: np.ndarray, ranks_per_node: int) -> np.ndarray:
    """int64 ``[G]``: ``perm[b]`` = the old GPU that new GPU ``b`` becomes, node-preserving, maximising
    ``sum_b shared[perm[b], b]``. ``shared`` is ``[G, G]`` (``shared_copies``)."""
    g = shared.shape[0]
    if ranks_per_node < 1 or g % ranks_per_node:
        raise InputError(f"relabel: {g} GPUs do not split into nodes of {ranks_per_node}")
    n = g // ranks_per_node
    block = shared.reshape(n, ranks_per_node, n, ranks_per_node)  # [old node, old rank, new node, new rank]
    value = np.zeros((n, n))
    inner: dict[tuple[int, int], np.ndarray] = {}
    for p in range(n):
        for q in range(n):
            rows, cols = linear_sum_assignment(block[p, :, q, :], maximize=True)
            value[p, q] = block[p, rows, q, cols].sum()
            inner[p, q] = rows[np.argsort(cols)]  # old rank within node p for each new rank of node q
    old_nodes, new_nodes = linear_sum_assignment(value, maximize=True)
    perm = np.empty(g, dtype=np.int64)
    for p, q in zip(old_nodes, new_nodes, strict=True):
        perm[q * ranks_per_node : (q + 1) * ranks_per_node] = p * ranks_per_node + inner[p, q]
    return perm


def relabel(new: Placement, old: Placement, ranks_per_node: int) -> Placement:
    """``new`` with its GPUs renumbered (one node-preserving permutation for every layer) to keep the most
    copies where ``old`` has them; ``info`` gains ``relabelled_kept`` (copies kept in place)."""
    shared = shared_copies(old, new)
    perm = best_permutation(shared, ranks_per_node)
    layers = []
    for layer in new.assignment:
        out: list[list[int]] = [[] for _ in layer]
        for b, experts in enumerate(layer):
            out[perm[b]] = list(experts)
        layers.append(out)
    kept = int(shared[perm, np.arange(len(perm))].sum())
    return Placement(layers, new.num_experts, new.name, {**new.info, "relabelled_kept": kept})


def relabel_chain(targets: list[Placement], ranks_per_node: int) -> list[Placement]:
    """``targets`` with each one relabelled against the previous (already relabelled) one."""
    out = list(targets[:1])
    for t in targets[1:]:
        out.append(relabel(t, out[-1], ranks_per_node))
    return out
