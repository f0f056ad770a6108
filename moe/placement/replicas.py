"""Replicas of hot experts added to an existing placement (used by MoETuner's ``replicas`` option).

Per layer, up to ``budget`` extra copies: each step takes the most loaded GPU, and copies its expert with the
highest load per copy onto the least loaded GPU that does not hold it yet (and has a free extra slot); the
expert's tokens are then split evenly over its copies. A step is kept only if it lowers that layer's
maximum GPU load; the layer stops at the first step that does not. With ``node_of`` the copy stays on the hot
GPU's node (as DeepSeek's hierarchical EPLB replicates inside a node): under an even split of an expert's
tokens over its copies, a copy on another node would send half of them across nodes.
"""

from __future__ import annotations

import numpy as np


def add_hot_replicas(
    assignment: list[list[list[int]]], load: np.ndarray, budget: int, node_of: np.ndarray | None = None
) -> tuple[list[list[list[int]]], np.ndarray]:
    """Add up to ``budget`` replicas per layer, at most ``ceil(budget / G)`` extra experts per GPU.

    Args:
        assignment: ``assignment[l][g]`` expert ids (not modified).
        load: ``P [L, E]`` token copies per expert.
        budget: extra copies per layer (>= 0).
        node_of: int ``[G]`` node of every GPU; when given, a copy goes only to a GPU of the hot GPU's node.

    Returns:
        The new assignment and int64 ``[L]``, the replicas added per layer.
    """
    p = np.asarray(load, dtype=np.float64)
    out = [[list(gpu) for gpu in layer] for layer in assignment]
    added = np.zeros(len(out), dtype=np.int64)
    if budget <= 0:
        return out, added
    g = len(out[0])
    per_gpu = -(-budget // g)
    for li, layer in enumerate(out):
        copies = np.zeros(p.shape[1])
        for gpu in layer:
            copies[gpu] += 1
        extra = np.zeros(g, dtype=np.int64)
        for _ in range(budget):
            gpu_load = np.array([sum(p[li, e] / copies[e] for e in gpu) for gpu in layer])
            hot = int(np.argmax(gpu_load))
            best = None
            for e in sorted(layer[hot], key=lambda x: -p[li, x] / copies[x]):
                targets = [
                    t
                    for t in range(g)
                    if e not in layer[t]
                    and extra[t] < per_gpu
                    and (node_of is None or node_of[t] == node_of[hot])
                ]
                if not targets:
                    continue
                t = min(targets, key=lambda t: (gpu_load[t], t))
                new_share = p[li, e] / (copies[e] + 1)
                trial = gpu_load.copy()
                for h in range(g):
                    if e in layer[h]:
                        trial[h] -= p[li, e] / copies[e] - new_share
                trial[t] += new_share
                if trial.max() < gpu_load.max() - 1e-9:
                    best = (e, t)
                    break
            if best is None:
                break
            e, t = best
            layer[t].append(e)
            copies[e] += 1
            extra[t] += 1
            added[li] += 1
    return out, added
