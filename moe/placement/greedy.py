"""Greedy load balancing: per layer, the heaviest expert goes to the least loaded GPU that still has room."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.config import schema
from moe.placement.base import Placement
from moe.placement.checks import check_counts, check_load
from moe.placement.placer import PlacementProblem, Placer


def balanced_pack(weights: np.ndarray, num_bins: int, capacity: int | np.ndarray) -> np.ndarray:
    """Longest-processing-time packing with item-count capacities.

    Items are taken heaviest first (ties: lower index first) and each goes to the lightest bin that still has
    room (ties: lower bin id). Deterministic.

    Args:
        weights: float ``[n]``, item loads.
        num_bins: number of bins.
        capacity: items per bin, an int or int ``[num_bins]``; must sum to at least ``n``.

    Returns:
        int64 ``[n]``, the bin of each item.
    """
    w = np.asarray(weights, dtype=np.float64)
    cap = np.broadcast_to(np.asarray(capacity, dtype=np.int64), (num_bins,)).copy()
    if cap.sum() < w.size:
        raise ValueError(
            f"balanced_pack: {w.size} items do not fit in {num_bins} bins of capacity {cap.tolist()}"
        )
    load = np.zeros(num_bins)
    out = np.empty(w.size, dtype=np.int64)
    for i in np.argsort(-w, kind="stable"):
        open_bins = np.flatnonzero(cap > 0)
        b = open_bins[np.argmin(load[open_bins])]
        out[i] = b
        load[b] += w[i]
        cap[b] -= 1
    return out


def greedy(load: np.ndarray, num_gpus: int) -> Placement:
    """Balance each layer's token load with ``E / G`` experts on every GPU.

    Args:
        load: ``P [L, E]``, token copies per expert per layer.
        num_gpus: G; must divide E.

    Returns:
        A placement without replicas; ``info`` holds the mean balancedness (mean / max GPU load).
    """
    p = check_load(load)
    num_layers, num_experts = p.shape
    per = check_counts(num_layers, num_experts, num_gpus, equal=True)
    gpu_of = np.stack([balanced_pack(row, num_gpus, per) for row in p])
    return Placement.from_expert_to_gpu(gpu_of, num_gpus, name="greedy")


@schema("placement", "greedy")
@dataclass(frozen=True)
class Greedy(Placer):
    """Heaviest expert to the least loaded GPU, ``E / G`` experts per GPU per layer."""

    name = "greedy"

    def place(self, problem: PlacementProblem) -> Placement:
        return greedy(problem.load, problem.num_gpus)
