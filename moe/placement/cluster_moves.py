"""Cluster-level moves across nodes for ``moetuner_plus`` (``cross_node_sweeps``): whole-group exchanges and
Kernighan-Lin sequences of expert swaps between GPUs of different nodes, each judged by the cost model.

A layer's GPU groups (the experts one GPU holds) are moved as wholes, or re-formed by a Kernighan-Lin pass:

- group exchange: two GPUs on different nodes trade their whole expert sets (the groups keep their load
  balance; only which node, hence which neighbours in the previous and next layer, changes), and two nodes
  trade all their GPUs' sets rank by rank;
- Kernighan-Lin: for two GPUs ``g1``, ``g2`` on different nodes, swap the pair ``(x on g1, y on g2)`` with the
  largest co-routing gain, lock both, repeat up to ``kl_steps`` times (a gain may be negative), and keep the
  prefix with the largest total gain. The gain of moving expert ``x`` from node ``a`` to node ``b`` is its
  co-routed pair counts with the experts on ``b`` minus those on ``a``: with the previous layer's experts
  (``R[l-1]``), the next layer's (``R[l]``) and its own layer's (same-token co-occurrence ``Q[l]``, with the
  usual ``- 2 Q[x, y]`` correction for the swapped pair). Swaps that would raise the layer's largest GPU load
  are skipped.

These are proposals: ``cluster_pass`` keeps one only when the cost model's time of its layer plus the next
one drops (``moe.placement.moetuner_plus``'s acceptance rule), so a pass never ends slower than it started.
"""

from __future__ import annotations

import numpy as np

from moe.placement.base import Layer, swap_experts


def same_layer_counts(experts: np.ndarray, num_experts: int) -> np.ndarray:
    """int64 ``[L, E, E]``: tokens that chose both experts in one layer (diagonal 0).

    Args:
        experts: integer ``[tokens, L, k]`` expert ids (distinct within a token's layer).
    """
    t, num_layers, _ = experts.shape
    out = np.zeros((num_layers, num_experts, num_experts), dtype=np.int64)
    rows = np.arange(t)[:, None]
    for li in range(num_layers):
        inc = np.zeros((t, num_experts), dtype=np.float64)
        inc[rows, experts[:, li, :]] = 1.0
        q = np.rint(inc.T @ inc).astype(np.int64)
        np.fill_diagonal(q, 0)
        out[li] = q
    return out


def node_shares(layer: Layer, num_experts: int, node_of: np.ndarray) -> np.ndarray:
    """float ``[E, M]``: the fraction of expert e's copies that node m holds in ``layer``."""
    m = int(node_of.max()) + 1
    out = np.zeros((num_experts, m))
    for g, gpu in enumerate(layer):
        out[gpu, node_of[g]] += 1.0
    return out / np.maximum(out.sum(axis=1, keepdims=True), 1.0)


def node_affinity(layers: list[Layer], li: int, pairs: np.ndarray, num_experts: int, node_of: np.ndarray):
    """float ``[E, M]``: pair counts of each expert of layer ``li`` with the previous and next layer's experts
    on every node (``pairs``: ``R [L-1, E, E]``)."""
    m = int(node_of.max()) + 1
    aff = np.zeros((num_experts, m))
    if li > 0:
        aff += pairs[li - 1].T @ node_shares(layers[li - 1], num_experts, node_of)
    if li + 1 < len(layers):
        aff += pairs[li] @ node_shares(layers[li + 1], num_experts, node_of)
    return aff


def group_exchanges(layer: Layer, node_of: np.ndarray) -> list[Layer]:
    """Every swap of two GPUs' whole expert sets across nodes, then every rank-by-rank swap of two nodes."""
    g = len(layer)
    out: list[Layer] = []
    for g1 in range(g):
        for g2 in range(g1 + 1, g):
            if node_of[g1] != node_of[g2]:
                new = [list(x) for x in layer]
                new[g1], new[g2] = new[g2], new[g1]
                out.append(new)
    ranks = [np.flatnonzero(node_of == n).tolist() for n in range(int(node_of.max()) + 1)]
    if len(ranks[0]) > 1:
        for a in range(len(ranks)):
            for b in range(a + 1, len(ranks)):
                new = [list(x) for x in layer]
                for ga, gb in zip(ranks[a], ranks[b], strict=True):
                    new[ga], new[gb] = new[gb], new[ga]
                out.append(new)
    return out


def _best_swap(layer, g1, g2, d, q, load, cap, locked):
    """The unlocked feasible pair (x on g1, y on g2) of largest KL gain (first in ``g1``, ``g2`` order on
    ties), or None."""
    xs, ys = np.array(layer[g1]), np.array(layer[g2])
    ok = np.ones((xs.size, ys.size), dtype=bool)
    ok &= ~np.isin(xs, list(locked) + layer[g2])[:, None]
    ok &= ~np.isin(ys, list(locked) + layer[g1])[None, :]
    l1, l2 = load[xs].sum(), load[ys].sum()
    delta = load[ys][None, :] - load[xs][:, None]  # load g1 gains
    ok &= np.maximum(l1 + delta, l2 - delta) <= cap
    if not ok.any():
        return None
    gain = np.where(ok, d[xs][:, None] + d[ys][None, :] - 2.0 * q[np.ix_(xs, ys)], -np.inf)
    i, j = np.unravel_index(int(np.argmax(gain)), gain.shape)
    return float(gain[i, j]), int(xs[i]), int(ys[j])


def kl_sequence(
    layer: Layer, g1: int, g2: int, aff: np.ndarray, q: np.ndarray, load: np.ndarray, node_of: np.ndarray,
    steps: int,
) -> tuple[Layer, float] | None:  # fmt: skip
    """The best prefix of a Kernighan-Lin swap sequence between GPUs ``g1`` and ``g2`` (module docstring).

    Args:
        aff: ``[E, M]`` from ``node_affinity``; q: ``[E, E]`` same-layer co-occurrence; load: ``[E]`` tokens.

    Returns:
        (the layer after the best prefix, its total proxy gain), or None when no prefix gains.
    """
    a, b = int(node_of[g1]), int(node_of[g2])
    cur = layer  # each swap makes a new layer: neither it nor a kept prefix changes later
    cap = max(float(load[gpu].sum()) for gpu in layer)
    locked: set[int] = set()
    total, best_total, best = 0.0, 0.0, None
    for _ in range(steps):
        shares = node_shares(cur, q.shape[0], node_of)
        qa, qb = q @ shares[:, a], q @ shares[:, b]
        d = np.zeros(q.shape[0])
        d[cur[g1]] = aff[cur[g1], b] - aff[cur[g1], a] + qb[cur[g1]] - qa[cur[g1]]
        d[cur[g2]] = aff[cur[g2], a] - aff[cur[g2], b] + qa[cur[g2]] - qb[cur[g2]]
        pick = _best_swap(cur, g1, g2, d, q, load, cap, locked)
        if pick is None:
            break
        gain, x, y = pick
        cur = swap_experts(cur, g1, x, g2, y)
        locked.update((x, y))
        total += gain
        if total > best_total + 1e-9:
            best_total, best = total, cur
    return None if best is None else (best, best_total)


def kl_proposals(
    layers: list[Layer], li: int, pairs: np.ndarray, q: np.ndarray, load: np.ndarray, node_of: np.ndarray,
    steps: int,
) -> list[Layer]:  # fmt: skip
    """One Kernighan-Lin proposal per pair of GPUs on different nodes, largest proxy gain first."""
    e = load.size
    aff = node_affinity(layers, li, pairs, e, node_of)
    layer = layers[li]
    found = []
    for g1 in range(len(layer)):
        for g2 in range(g1 + 1, len(layer)):
            if node_of[g1] != node_of[g2]:
                res = kl_sequence(layer, g1, g2, aff, q, load, node_of, steps)
                if res is not None:
                    found.append((-res[1], g1, g2, res[0]))
    found.sort(key=lambda r: (r[0], r[1], r[2]))
    return [r[3] for r in found]
