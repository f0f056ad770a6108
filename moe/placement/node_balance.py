"""Within-node rebalancing for ``moetuner_plus`` (``node_balance_sweeps``): swaps of two experts between GPUs of
one node that even out the cross-node traffic each GPU's NIC carries and the token copies each GPU computes.

Why: across nodes a phase of the all-to-all ends when the busiest NIC is done (``docs/cost_model.md``, "Links").
Which node holds an expert fixes how many tokens cross nodes; which GPU of that node holds it fixes whose NIC
carries them. Placements that group experts by node (ExFlow, the cluster moves) leave that second choice to
load balance alone: on the shared DeepSeek-V2-Lite trace over 2 nodes the busiest NIC carried 1.17-1.21x the
mean (whole evaluated set). A swap inside a node keeps every node's expert set, hence which tokens must cross
(not how many transfers they make: a token whose experts on a remote node sit on two of its GPUs crosses
twice).

Per layer, with ``T`` profiled tokens at positions ``src [T]`` (GPU ids entering the layer) and expert ids
``experts [k, T]``:

- ``remote[g, e]``: tokens routed to expert ``e`` whose position is on another node than GPU ``g``, divided
  by ``e``'s copies (a replica takes its share): what ``e`` adds to ``g``'s NIC if ``g`` holds it;
- per GPU, ``R[g] = sum remote[g, e]`` and ``C[g] = sum load[e] / copies[e]`` over its experts;
- for the GPU with the largest ``R`` on each node against every other GPU of its node, every swap
  ``(x on g1, y on g2)`` is scored by ``max(R1', R2') / mean(R) + max(C1', C2') / mean(C)`` after the swap;
  per pair, the ``top`` best swaps that lower this score below the pair's current one are proposed, all
  pairs' proposals together ordered by how much they lower it.

These are proposals: the search keeps one only when the cost model's time of its layer plus the next one
drops (``moe.placement.moetuner_plus``'s acceptance rule).
"""

from __future__ import annotations

import numpy as np

from moe.placement.base import Layer, swap_experts


def copies_per_expert(layer: Layer, num_experts: int) -> np.ndarray:
    """float ``[E]``: GPUs holding each expert in ``layer`` (``layer[g]`` = expert ids of GPU ``g``)."""
    copies = np.zeros(num_experts)
    for gpu in layer:
        copies[gpu] += 1.0
    return copies


def remote_counts(
    layer: Layer, experts: np.ndarray, src: np.ndarray, node_of: np.ndarray, num_experts: int
) -> np.ndarray:
    """float ``[G, E]``: tokens routed to each expert from another node than each GPU, per copy (module
    docstring).

    Args:
        layer: expert ids per GPU (``G`` lists).
        experts: int ``[k, T]`` expert ids of the layer's tokens.
        src: int ``[T]`` GPU of each token entering the layer.
        node_of: int ``[G]`` node of each GPU.
    """
    copies = np.maximum(copies_per_expert(layer, num_experts), 1.0)
    token_node = node_of[src]
    out = np.zeros((len(layer), num_experts))
    for node in np.unique(node_of):
        far = token_node != node
        count = np.bincount(experts[:, far].ravel(), minlength=num_experts)[:num_experts]
        out[node_of == node] = count / copies
    return out


def _pair_swaps(layer: Layer, g1: int, g2: int, remote: np.ndarray, per_copy: np.ndarray, norms):  # noqa: ANN001
    """(score ``[X, Y]``, current score, ``xs [X]``, ``ys [Y]``) of every swap between ``g1`` and ``g2``."""
    r_tot, c_tot, r_mean, c_mean = norms
    xs = np.array([x for x in layer[g1] if x not in layer[g2]], dtype=np.int64)
    ys = np.array([y for y in layer[g2] if y not in layer[g1]], dtype=np.int64)
    d_r = remote[g2, ys][None, :] - remote[g1, xs][:, None]  # what g1's NIC gains
    d_c = per_copy[ys][None, :] - per_copy[xs][:, None]  # what g1's compute gains
    r1, r2 = r_tot[g1] + d_r, r_tot[g2] - d_r
    c1, c2 = c_tot[g1] + d_c, c_tot[g2] - d_c
    score = np.maximum(r1, r2) / r_mean + np.maximum(c1, c2) / c_mean
    now = max(r_tot[g1], r_tot[g2]) / r_mean + max(c_tot[g1], c_tot[g2]) / c_mean
    return score, now, xs, ys


def node_balance_proposals(
    layer: Layer, remote: np.ndarray, load: np.ndarray, node_of: np.ndarray, top: int
) -> list[Layer]:
    """Within-node swaps of one layer (module docstring; at most ``top`` per GPU pair), best first; none on
    one node or when no token crosses nodes.

    Args:
        layer: expert ids per GPU (``G`` lists).
        remote: float ``[G, E]`` from ``remote_counts``.
        load: float ``[E]`` token copies routed to each expert (the profile's).
        node_of: int ``[G]`` node of each GPU.
        top: most proposals per pair of GPUs.
    """
    per_copy = np.asarray(load, dtype=np.float64) / np.maximum(copies_per_expert(layer, load.size), 1.0)
    r_tot = np.array([remote[g, gpu].sum() for g, gpu in enumerate(layer)])
    c_tot = np.array([per_copy[gpu].sum() for gpu in layer])
    if np.unique(node_of).size < 2 or r_tot.mean() <= 0 or c_tot.mean() <= 0:
        return []
    norms = (r_tot, c_tot, r_tot.mean(), c_tot.mean())
    found: list[tuple[float, int, int, int, int]] = []
    for node in np.unique(node_of):
        gpus = np.flatnonzero(node_of == node)
        hot = int(gpus[np.argmax(r_tot[gpus])])
        for other in gpus.tolist():
            if other == hot:
                continue
            score, now, xs, ys = _pair_swaps(layer, hot, other, remote, per_copy, norms)
            for flat in np.argsort(score, axis=None, kind="stable")[:top].tolist():
                i, j = divmod(flat, max(ys.size, 1))
                if score[i, j] < now - 1e-9:
                    found.append((float(score[i, j] - now), hot, int(xs[i]), other, int(ys[j])))
    found.sort()
    return [swap_experts(layer, g1, x, g2, y) for _, g1, x, g2, y in found]
