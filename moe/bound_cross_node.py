"""A lower bound on the modelled MoE-layer time with a cross-node traffic term (stronger than ``moe.bound``
on several nodes; ``docs/cost_model.md``, "Lower bounds").

Cross-node transfers. In one layer a token is *split* when the GPUs that process its ``k`` experts lie on
more than one node. A split token sends at least one dispatch transfer and one combine transfer across
nodes, whatever the replay rules (its position is on one node, some of its experts' GPUs on another; and
every GPU off the node of its next position sends a partial result back). A token is surely split when two
of its experts that have copies on one node only sit on different nodes.

How many tokens must be split (any placement with at most ``S`` experts per GPU; ``M`` nodes of ``C = S x``
ranks-per-node slots; ``r = G S - E`` experts at most may have copies on several nodes): let ``W[e, f]`` count
the tokens of the layer that chose both ``e`` and ``f``, ``Lap`` its Laplacian, and ``u[e]`` the sum of the
``r`` largest entries of row ``e`` of ``W``. For the experts ``E'`` with copies on one node only (at least
``E - r`` of them), split node by node into parts of ``s_n <= C`` experts,

    cut pairs >= 1/2 mu sum_n s_n (|E'| - s_n) / |E'|,   mu = smallest eigenvalue of Lap - diag(u) on 1-perp

(the spectral bound on the graph without the replicated experts: deleting them lowers each row's degree by at
most ``u``), minimised over ``|E'|`` and the part sizes. A split token cuts at most ``floor(k^2/4)`` pairs (two
nodes; ``(k^2 - sum a_n^2)/2`` over more), so split tokens >= cut pairs / that.

Time. A phase's tail is at least any rank's cross-node bytes over its cross-node capacity (``min(NIC,
its cross-node links)``), so at least all cross-node bytes over the sum of those capacities. Per layer the
bound is compute (``moe.bound``) + dispatch + combine, each phase the larger of ``moe.bound``'s term and the
cross-node term. The batch mean of split tokens is at least the whole evaluated set's minimum over ``nb``
batches, because the placement is the same for every batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moe.bound import layer_time_lower_bound
from moe.cost_model import CostReport
from moe.topology import Topology


def co_routing_counts(experts_layer: np.ndarray, num_experts: int) -> np.ndarray:
    """float ``[E, E]``: tokens of ``experts_layer [T, k]`` (distinct ids per token) that chose both; diagonal 0."""
    t = experts_layer.shape[0]
    inc = np.zeros((t, num_experts))
    inc[np.arange(t)[:, None], experts_layer] = 1.0
    w = inc.T @ inc
    np.fill_diagonal(w, 0.0)
    return w


def max_cut_pairs(top_k: int, nodes: int) -> int:
    """The most expert pairs of one token that ``nodes`` nodes can separate (``k`` as evenly as possible)."""
    parts = min(top_k, nodes)
    if parts < 2:
        return 0
    sizes = np.full(parts, top_k // parts)
    sizes[: top_k % parts] += 1
    return int((top_k * top_k - int((sizes * sizes).sum())) // 2)


def spectral_floor(w: np.ndarray, replicated: int) -> float:
    """``mu``: smallest eigenvalue of ``Lap(w) - diag(u)`` on vectors orthogonal to all-ones (module docstring)."""
    e = w.shape[0]
    lap = np.diag(w.sum(axis=1)) - w
    if replicated > 0:
        lap = lap - np.diag(-np.sort(-w, axis=1)[:, :replicated].sum(axis=1))
    basis = np.linalg.qr(np.eye(e) - 1.0 / e, mode="complete")[0][:, : e - 1]  # a basis of 1-perp
    return float(np.linalg.eigvalsh(basis.T @ lap @ basis)[0])


def _size_term(num_experts: int, nodes: int, node_slots: int, replicated: int) -> float:
    """``min over |E'|, s_n <= C of 1/2 sum_n s_n (|E'| - s_n) / |E'|`` (concave: fill nodes to ``C``)."""
    best = np.inf
    for d in range(0, min(replicated, num_experts) + 1):
        ep = num_experts - d
        full, rest = divmod(ep, node_slots)
        if full + (rest > 0) > nodes:
            continue  # not placeable; more replicas only make it so sooner
        sizes = [node_slots] * full + ([rest] if rest else [])
        best = min(best, 0.5 * sum(s * (ep - s) for s in sizes) / ep)
    return 0.0 if not np.isfinite(best) else float(best)


def min_split_tokens(
    experts_layer: np.ndarray, num_experts: int, nodes: int, node_slots: int, replicated: int
) -> float:
    """A lower bound on the tokens of ``experts_layer [T, k]`` that every placement splits across nodes.

    Args:
        nodes: M. node_slots: C, expert slots of one node. replicated: r, the most experts with copies on
            several nodes.
    """
    k = experts_layer.shape[1]
    pairs = max_cut_pairs(k, nodes)
    if nodes < 2 or pairs == 0 or node_slots >= num_experts:
        return 0.0
    mu = spectral_floor(co_routing_counts(experts_layer, num_experts), replicated)
    return max(0.0, mu) * _size_term(num_experts, nodes, node_slots, replicated) / pairs


def cross_node_capacity_bytes_per_s(topology: Topology) -> float:
    """Sum over ranks of ``min(NIC, sum of the rank's cross-node links)`` in bytes/s (0: one node)."""
    bw = np.where(topology.cross_node(), topology.bandwidth_bytes_per_s(), 0.0).sum(axis=1)
    nic = topology.rank_nic_bytes_per_s()
    return float((bw if nic is None else np.minimum(bw, nic)).sum())


@dataclass(frozen=True)
class CrossNodeBound:
    """Per layer ``[L]``: split tokens per batch (a lower bound) and the bound's seconds per batch."""

    split_tokens: np.ndarray
    compute_s: np.ndarray
    dispatch_s: np.ndarray
    combine_s: np.ndarray

    @property
    def total_s(self) -> float:
        """Bound on ``layer_time_tail_s`` (seconds per batch, summed over layers)."""
        return float((self.compute_s + self.dispatch_s + self.combine_s).sum())


def cross_node_bound(
    experts: np.ndarray,
    num_experts: int,
    topology: Topology,
    slots_per_gpu: int,
    batch_tokens: int,
    dedupe: bool = True,
) -> CrossNodeBound:
    """The bound of the evaluated tokens ``experts [T, L, k]`` (the first whole batches of ``batch_tokens``)."""
    t_all, num_layers, k = experts.shape
    n = min(batch_tokens, t_all)
    nb = t_all // n
    used = np.asarray(experts[: nb * n])
    g, nodes = topology.num_gpus, topology.num_nodes
    node_slots = slots_per_gpu * topology.ranks_per_node
    replicated = max(0, g * slots_per_gpu - num_experts)
    base = layer_time_lower_bound(n, k, topology, slots_per_gpu, dedupe)
    cap = cross_node_capacity_bytes_per_s(topology)
    split = np.array(
        [
            min_split_tokens(used[:, li], num_experts, nodes, node_slots, replicated) / nb
            for li in range(num_layers)
        ]
    )
    cross = split * float(topology.bytes_per_token) / cap if cap > 0 else np.zeros(num_layers)
    return CrossNodeBound(
        split_tokens=split,
        compute_s=np.full(num_layers, base.compute_s),
        dispatch_s=np.maximum(base.dispatch_s, cross),
        combine_s=np.maximum(base.combine_s, cross),
    )


def fraction_of_cross_node_bound(
    report: CostReport, experts: np.ndarray, num_experts: int, topology: Topology, slots_per_gpu: int
) -> dict[str, float]:
    """``cross_bound_layer_time_s``, its cross-node part, the split fraction and ``fraction_of_cross_bound``
    (bound / ``layer_time_tail_s``) of a report of ``experts`` (the evaluation trace it replayed)."""
    b = cross_node_bound(
        experts, num_experts, topology, slots_per_gpu, report.batch_tokens, report.options.dedupe_dispatch
    )
    achieved = report.summary()["layer_time_tail_s"]
    return {
        "cross_bound_layer_time_s": b.total_s,
        "cross_bound_a2a_s": float((b.dispatch_s + b.combine_s).sum()),
        "split_token_fraction_lb": float(b.split_tokens.mean() / report.batch_tokens),
        "fraction_of_cross_bound": b.total_s / achieved if achieved > 0 else 1.0,
    }
