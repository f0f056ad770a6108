"""A lower bound on the modelled MoE-layer time that no placement can beat (docs/cost_model.md).

Per batch of ``N`` tokens and per layer, the cost model's MoE-layer time is dispatch tail + compute tail +
combine tail (``moe.cost_model``). Each term has a bound that holds for every placement that keeps at most
``S`` experts (replicas included) on a GPU:

- compute: the ``N k`` token copies spread perfectly, ``ceil(N k / G) x time_per_token_s``;
- dispatch (and combine alike): a token's ``k`` distinct experts lie on at least ``ceil(k / S)`` GPUs, at most
  one of them the token's own, so at least ``m = ceil(k / S) - 1`` transfers per token leave its GPU (with
  ``dedupe_dispatch=false``: ``k - S`` copies). ``N m`` transfers spread perfectly over every rank's send
  capacity (its links, capped by its switch ports and NIC) take at least
  ``N m bytes_per_token / sum_g capacity_g``.

The bound is the sum of the three (it is at least their maximum). It depends on the trace only through
``N`` and ``k``, so it is the same for every placement of a run with the same ``S``;
``fraction_of_bound = bound / achieved`` (1.0 = nothing left to gain).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from moe.cost_model import CostReport
from moe.placement.base import Placement
from moe.topology import Topology


@dataclass(frozen=True)
class LayerBound:
    """Seconds per batch and layer: the three parts and their sum ``total_s``."""

    compute_s: float
    dispatch_s: float
    combine_s: float

    @property
    def total_s(self) -> float:
        return self.compute_s + self.dispatch_s + self.combine_s


def min_remote_transfers(top_k: int, slots_per_gpu: int, dedupe: bool = True) -> int:
    """Transfers per token and phase that must leave its GPU when a GPU holds at most ``slots_per_gpu``."""
    if slots_per_gpu < 1:
        raise ValueError(f"slots_per_gpu must be >= 1, got {slots_per_gpu}")
    if dedupe:
        return max(0, math.ceil(top_k / slots_per_gpu) - 1)
    return max(0, top_k - slots_per_gpu)


def layer_time_lower_bound(
    batch_tokens: int, top_k: int, topology: Topology, slots_per_gpu: int, dedupe: bool = True
) -> LayerBound:
    """The bound of one batch of ``batch_tokens`` tokens at one layer (see the module docstring)."""
    g = topology.num_gpus
    compute = math.ceil(batch_tokens * top_k / g) * float(topology.time_per_token_s)
    m = min_remote_transfers(top_k, min(slots_per_gpu, 10**9), dedupe) if g > 1 else 0
    cap = float(topology.send_capacity_bytes_per_s().sum())
    comm = batch_tokens * m * float(topology.bytes_per_token) / cap if m and cap > 0 else 0.0
    return LayerBound(compute_s=compute, dispatch_s=comm, combine_s=comm)


def fraction_of_bound(
    report: CostReport, top_k: int, topology: Topology, slots_per_gpu: int
) -> dict[str, float]:
    """``bound_layer_time_s`` (summed over layers) and ``fraction_of_bound`` (bound / ``layer_time_tail_s``).

    Args:
        report: the cost model's report of a placement.
        top_k: experts per token of the evaluated trace.
        topology: the topology it was evaluated on.
        slots_per_gpu: the most experts a GPU may hold in a layer (``max_slots``).
    """
    b = layer_time_lower_bound(
        report.batch_tokens, top_k, topology, slots_per_gpu, report.options.dedupe_dispatch
    )
    total = b.total_s * report.num_layers_evaluated
    achieved = report.summary()["layer_time_tail_s"]
    return {
        "bound_layer_time_s": total,
        "bound_compute_s": b.compute_s * report.num_layers_evaluated,
        "bound_a2a_s": (b.dispatch_s + b.combine_s) * report.num_layers_evaluated,
        "fraction_of_bound": total / achieved if achieved > 0 else 1.0,
    }


def max_slots(*placements: Placement) -> int:
    """The most experts any GPU holds in any layer of ``placements`` (the memory the bound allows)."""
    return max(int(p.experts_per_gpu().max()) for p in placements)
