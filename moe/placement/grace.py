"""GRACE-MoE-style placement (arXiv 2509.25041, written from its description in papers.md; code not released).

Offline, per layer in order: (1) experts are grouped by affinity with the previous layer, hierarchically:
an expert goes to the node, then the GPU, that sends it the most profiled consecutive-layer pairs, so that
a token's next experts sit where the token is; group sizes stay at ``E / G`` experts per GPU (memory), and the
GPU loads may differ by up to ``load_slack`` of the mean (a non-uniform grouping); (2) hot experts are
replicated (``replicas`` extra copies per layer, on the least loaded GPUs) to repair the load skew that the
grouping creates. Online, GRACE routes a token to a replica on its own GPU or node first: that is the
cost model's ``eval.replica_choice=local``; the placement itself does not route.

Layer 0 has no previous layer: its experts are packed by load (longest processing time first).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.config import schema
from common.errors import ConfigError
from moe.placement.base import Placement
from moe.placement.checks import check_counts
from moe.placement.greedy import balanced_pack
from moe.placement.placer import PlacementProblem, Placer
from moe.placement.replicas import add_hot_replicas


def affinity_layer(
    incoming: np.ndarray, load: np.ndarray, node_of: np.ndarray, slack: float, node_weight: float
) -> np.ndarray:
    """GPU of every expert of one layer, by affinity under a slot and a load cap.

    Args:
        incoming: float ``[E, G]``: profiled pairs that reach expert e from the previous layer's experts on
            GPU g.
        load: float ``[E]`` token copies per expert.
        node_of: int ``[G]`` node of each GPU.
        slack: a GPU's load may exceed the mean by this fraction (the cap is lifted when nothing fits).
        node_weight: weight of the pairs from the GPU's whole node (hierarchical grouping; 0 = flat).

    Returns:
        int64 ``[E]``; every GPU gets ``E / G`` experts.
    """
    e, g = incoming.shape
    nodes = int(node_of.max()) + 1
    node_in = np.stack([incoming[:, node_of == n].sum(axis=1) for n in range(nodes)], axis=1)  # [E, nodes]
    score = incoming + node_weight * node_in[:, node_of]  # [E, G]
    cap_load = (1.0 + slack) * load.sum() / g
    slots = np.full(g, e // g, dtype=np.int64)
    gpu_load = np.zeros(g)
    out = np.full(e, -1, dtype=np.int64)
    order = np.lexsort((-load, -incoming.sum(axis=1)))  # most affine first, then heaviest
    for ex in order:
        ok = (slots > 0) & (gpu_load + load[ex] <= cap_load)
        if not ok.any():
            ok = slots > 0
        cand = np.flatnonzero(ok)
        best = cand[np.lexsort((gpu_load[cand], -score[ex, cand]))[0]]
        out[ex] = best
        slots[best] -= 1
        gpu_load[best] += load[ex]
    return out


def grace(
    problem: PlacementProblem, replicas: int, load_slack: float = 0.1, node_weight: float = 0.5
) -> Placement:
    """The GRACE-style placement of ``problem`` (see the module docstring).

    Returns:
        A placement named ``grace``; ``info`` reports the replicas added and the affinity kept on-GPU.
    """
    p = np.asarray(problem.load, dtype=np.float64)
    r = np.asarray(problem.pairs, dtype=np.float64)
    num_layers, e, g = problem.shape
    check_counts(num_layers, e, g, equal=True)
    node_of = np.arange(g) // problem.gpus_per_node
    gpu_of = np.empty((num_layers, e), dtype=np.int64)
    gpu_of[0] = balanced_pack(p[0], g, e // g)
    kept = 0.0
    for li in range(1, num_layers):
        onehot = np.eye(g)[gpu_of[li - 1]]  # [E_prev, G]
        incoming = r[li - 1].T @ onehot  # [E, G]: pairs reaching e from GPU g
        gpu_of[li] = affinity_layer(incoming, p[li], node_of, load_slack, node_weight)
        kept += float(incoming[np.arange(e), gpu_of[li]].sum())
    assignment = [[np.flatnonzero(row == gg).tolist() for gg in range(g)] for row in gpu_of]
    assignment, added = add_hot_replicas(assignment, p, replicas)
    total = float(r.sum())
    info = {
        "replicas_added": int(added.sum()),
        "pairs_on_gpu_fraction": kept / total if total else 0.0,
        "notes": ["route tokens to a local replica first: eval.replica_choice=local (GRACE's routing)"],
    }
    return Placement(assignment, num_experts=e, name="grace", info=info)


@schema("placement", "grace")
@dataclass(frozen=True)
class Grace(Placer):
    """GRACE-MoE-style placement: affinity grouping, hot-expert replicas.

    Attributes:
        replicas: extra copies of hot experts per layer (GRACE replicates; default 0, the YAML sets one
            per EP rank, EPLB's budget).
        load_slack: a GPU's load may exceed the layer mean by this fraction during grouping.
        node_weight: weight of node-level affinity against GPU-level affinity (hierarchical grouping).
    """

    name = "grace"
    replicas: int = 0
    load_slack: float = 0.1
    node_weight: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()  # the time budget
        if isinstance(self.replicas, bool) or not isinstance(self.replicas, int) or self.replicas < 0:
            raise ConfigError("replicas", f"expected a non-negative integer, got {self.replicas!r}")
        for key in ("load_slack", "node_weight"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
                raise ConfigError(key, f"expected a non-negative number, got {v!r}")

    def place(self, problem: PlacementProblem) -> Placement:
        return grace(problem, self.replicas, float(self.load_slack), float(self.node_weight))
