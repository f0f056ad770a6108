"""The small setting that the MoETuner+ search tests share: a 2-node topology of 4 GPUs each, and a search
problem on the ``trace`` fixture (``tests/moe/conftest.py``): the profile, an EPLB start with one extra slot
per GPU, and the one-layer cost model."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moe.cost_model import EvalOptions
from moe.layer_model import LayerModel
from moe.placement.base import Placement
from moe.placement.eplb import eplb
from moe.placement.profiled import ProfiledProblem
from moe.topology import Compute, Topology

TOPO = Topology(
    name="t",
    num_nodes=2,
    gpus_per_node=4,
    intra_node_gbps=450,
    inter_node_gbps=50,
    gpu_port_gbps=450,
    nic_gbps=50,
    hidden_size=2048,
    compute=Compute(time_per_token_s=5e-8),
)


@dataclass
class SearchCase:
    problem: ProfiledProblem
    start: Placement
    model: LayerModel


def search_case(experts: np.ndarray, num_experts: int) -> SearchCase:
    """``experts`` int ``[T, L, k]`` as the profile (batches of 1,000 tokens) on ``TOPO``; EPLB with 8 extra
    slots as the start."""
    opts = EvalOptions(batch_tokens=1000)
    problem = ProfiledProblem.from_trace(experts, num_experts, TOPO, opts, "unordered", 0)
    start = eplb(problem.load, TOPO.num_gpus, TOPO.gpus_per_node, num_redundant=TOPO.num_gpus)
    return SearchCase(problem, start, LayerModel(experts, TOPO, opts, "unordered", num_experts))
