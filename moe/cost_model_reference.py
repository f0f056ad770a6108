"""A slow, per-token reference of the cost model's counting rules, for tests and the benchmark's baseline.

It walks every token through every layer in plain Python, following the rules of ``moe.cost_model`` written
out one at a time, and returns the counts the vectorised model must reproduce exactly.
"""

from __future__ import annotations

import numpy as np

from moe.cost_model import EvalOptions
from moe.placement.base import Placement
from moe.topology import Topology

_MASK = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """SplitMix64 in plain integers (the cost model's ``token_hash``, written independently)."""
    z = (x + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def _next_position(dests: list[int], t: int, g: int, slot_order: str) -> int:
    """``follow``: slot 0's GPU (score order), else the GPU with most copies, ties by the token hash."""
    if slot_order == "score":
        return dests[0]
    return max(set(dests), key=lambda d: (dests.count(d), _splitmix64(t * g + d) >> 8))


def reference_counts(
    experts: np.ndarray,
    placement: Placement,
    topology: Topology,
    options: EvalOptions,
    slot_order: str = "unordered",
) -> dict[str, np.ndarray]:
    """Token copies per GPU ``[L, G]``, dispatch and combine transfers ``[L, G, G]`` (whole evaluated set).

    Args:
        experts: integer ``[tokens, layers, top_k]``.
        placement, topology, options, slot_order: as for ``moe.cost_model.evaluate_placement``.
    """
    t_all, num_layers, k = experts.shape
    g = topology.num_gpus
    n = min(options.batch_tokens or t_all, t_all)
    used = (t_all // n) * n
    node = topology.node_of().tolist()
    holders = [[[gi for gi in range(g) if e in placement.assignment[li][gi]] for e in range(placement.num_experts)]
               for li in range(num_layers)]  # fmt: skip
    load = np.zeros((num_layers, g), dtype=np.int64)
    dispatch = np.zeros((num_layers, g, g), dtype=np.int64)
    combine = np.zeros((num_layers, g, g), dtype=np.int64)
    for t in range(used):
        i = t % n
        pos = i * g // n if options.first_layer_start == "uniform" else i % g
        start = pos
        for li in range(num_layers):
            dests = []
            for e in experts[t, li].tolist():
                h = holders[li][e]
                if options.replica_choice == "even":
                    cand = h
                elif pos in h:
                    cand = [pos]
                else:
                    cand = [x for x in h if node[x] == node[pos]] or h
                dests.append(cand[t % len(cand)])
            sent = []
            for d in dests:
                load[li, d] += 1
                if options.dedupe_dispatch and d in sent:
                    continue
                sent.append(d)
            nxt = _next_position(dests, t, g, slot_order) if options.token_movement == "follow" else start
            for d in sent:
                dispatch[li, pos, d] += 1
                combine[li, d, nxt] += 1
            pos = nxt
    return {"tokens_per_gpu": load, "dispatch": dispatch, "combine": combine}
