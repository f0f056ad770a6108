"""A placement problem that also carries the profiling trace and the cluster, for placements that search
the cost model itself (``moetuner_plus``). Every other placement sees it as a plain ``PlacementProblem``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moe.cost_model import EvalOptions
from moe.placement.placer import PlacementProblem
from moe.stats import cross_layer_counts, expert_load
from moe.topology import Topology


@dataclass(frozen=True)
class ProfiledProblem(PlacementProblem):
    """``PlacementProblem`` plus what the cost model needs, all from the profiling part.

    Attributes:
        experts: int ``[tokens, L, top_k]`` expert ids of the profiling trace (``None``: not available).
        topology: the cluster the placement will be evaluated on.
        options: the replay rules of the run (``eval``).
        slot_order: the trace's ``slot_order``.
    """

    experts: np.ndarray | None = None
    topology: Topology | None = None
    options: EvalOptions | None = None
    slot_order: str = "unordered"

    @classmethod
    def from_trace(
        cls, experts: np.ndarray, num_experts: int, topology: Topology, options: EvalOptions, slot_order: str,
        seed: int,
    ) -> ProfiledProblem:  # fmt: skip
        """The problem of profiled choices ``experts [T, L, k]``: load ``P``, pairs ``R``, ``topology``'s
        bandwidth, and the trace itself for placements that search the cost model."""
        return cls(
            expert_load(experts, num_experts),
            cross_layer_counts(experts, num_experts),
            topology.bandwidth_gbps(),
            topology.ranks_per_node,
            seed,
            experts=experts,
            topology=topology,
            options=options,
            slot_order=slot_order,
        )
