"""An EPLB-style load balancer with redundant experts, written from its description in papers.md.

Hierarchical mode: (1) pack expert groups onto nodes, heaviest group first into the lightest node that still
has room (every node gets the same number of groups); (2) within each node, give one more replica to the
expert with the highest load per replica until the node's slots are used; (3) pack each node's replicas onto
its GPUs the same way (heaviest replica first into the lightest GPU with a free slot, never two copies of one
expert on one GPU). Global mode: one group and one node. Load only; communication is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.config import schema
from common.errors import ConfigError, InputError
from moe.placement.base import Placement
from moe.placement.checks import check_load, check_nodes
from moe.placement.placer import PlacementProblem, Placer


def _replicate(weight: np.ndarray, slots: int, max_copies: int) -> np.ndarray:
    """Copies per expert: start at 1, then +1 to the highest load-per-copy expert (capped) until ``slots``."""
    cnt = np.ones(weight.size, dtype=np.int64)
    for _ in range(slots - weight.size):
        per = np.where(cnt < max_copies, weight / cnt, -np.inf)
        cnt[int(np.argmax(per))] += 1
    return cnt


def _pack_distinct(items: np.ndarray, weights: np.ndarray, num_bins: int, per_bin: int) -> np.ndarray:
    """Pack items (expert ids, repeated for replicas) into bins of ``per_bin`` slots, heaviest first into the
    lightest bin with room that does not hold the same expert; a swap repairs the rare dead end.

    Returns int64 ``[len(items)]`` bin ids.
    """
    order = np.argsort(-weights, kind="stable")
    load = np.zeros(num_bins)
    room = np.full(num_bins, per_bin, dtype=np.int64)
    holds: list[set[int]] = [set() for _ in range(num_bins)]
    out = np.full(items.size, -1, dtype=np.int64)
    for i in order:
        e = int(items[i])
        ok = [b for b in range(num_bins) if room[b] > 0 and e not in holds[b]]
        if ok:
            b = min(ok, key=lambda b: (load[b], b))
        else:  # only bins that hold e have room: swap a placed item y from bin c into bin b, e into c
            b = next(b for b in range(num_bins) if room[b] > 0)
            done = False
            for j in np.flatnonzero(out >= 0):
                c, y = int(out[j]), int(items[j])
                if c != b and e not in holds[c] and y not in holds[b]:
                    holds[c].discard(y)
                    holds[b].add(y)
                    load[c] -= weights[j]
                    load[b] += weights[j]
                    out[j] = b
                    room[b] -= 1
                    room[c] += 1
                    b, done = c, True
                    break
            if not done:
                raise RuntimeError("eplb: cannot place replicas on distinct GPUs")
        out[i] = b
        holds[b].add(e)
        load[b] += weights[i]
        room[b] -= 1
    return out


def _check_rebalance(e: int, num_replicas: int, num_groups: int, num_nodes: int, num_gpus: int) -> None:
    """Refuse slot, group and node counts that ``rebalance_experts`` cannot pack (the message has numbers)."""
    if num_replicas < e or num_replicas % num_gpus:
        raise InputError(
            f"eplb: num_replicas={num_replicas} must be >= {e} experts and a multiple of {num_gpus} GPUs"
        )
    if num_gpus % num_nodes:
        raise InputError(f"eplb: {num_gpus} GPUs are not a whole number of {num_nodes} nodes")
    if e % num_groups or num_groups % num_nodes:
        raise InputError(
            f"eplb: num_groups={num_groups} must divide {e} experts and be a multiple of {num_nodes} nodes"
        )
    if num_replicas // num_gpus > e // num_nodes:
        raise InputError(
            f"eplb: {num_replicas // num_gpus} slots per GPU exceed the {e // num_nodes} experts of a node; a GPU cannot hold "
            "two copies of one expert (use fewer redundant experts)"
        )


def rebalance_experts(
    weight: np.ndarray, num_replicas: int, num_groups: int, num_nodes: int, num_gpus: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Balance expert load with ``num_replicas`` physical slots per layer.

    Args:
        weight: ``[L, E]`` load per logical expert.
        num_replicas: physical slots per layer (``>= E``, a multiple of ``num_gpus``).
        num_groups: expert groups (a divisor of E, a multiple of ``num_nodes``); 1 with 1 node = global mode.
        num_nodes: nodes (a divisor of ``num_gpus``).
        num_gpus: GPUs.

    Returns:
        ``phy2log`` int64 ``[L, num_replicas]`` (slot s lives on GPU ``s // (num_replicas / num_gpus)``),
        ``log2phy`` int64 ``[L, E, max_copies]`` (slots of each expert, ``-1`` padded), ``logcnt`` int64
        ``[L, E]`` (copies of each expert).
    """
    w = check_load(weight, "weight")
    num_layers, e = w.shape
    _check_rebalance(e, num_replicas, num_groups, num_nodes, num_gpus)
    slots_gpu = num_replicas // num_gpus
    gpus_node = num_gpus // num_nodes
    slots_node = num_replicas // num_nodes
    group_size = e // num_groups
    phy2log = np.empty((num_layers, num_replicas), dtype=np.int64)
    for li in range(num_layers):
        group_load = w[li].reshape(num_groups, group_size).sum(axis=1)
        node_of_group = _pack_distinct(np.arange(num_groups), group_load, num_nodes, num_groups // num_nodes)
        for n in range(num_nodes):
            experts = np.concatenate(
                [
                    np.arange(gi * group_size, (gi + 1) * group_size)
                    for gi in np.flatnonzero(node_of_group == n)
                ]
            )
            cnt = _replicate(w[li, experts], slots_node, gpus_node)
            items = np.repeat(experts, cnt)
            loads = np.repeat(w[li, experts] / cnt, cnt)
            gpu = _pack_distinct(items, loads, gpus_node, slots_gpu)
            for local in range(gpus_node):
                held = np.sort(items[gpu == local])
                start = (n * gpus_node + local) * slots_gpu
                phy2log[li, start : start + slots_gpu] = held
    logcnt = np.stack([np.bincount(row, minlength=e) for row in phy2log])
    return phy2log, _log2phy(phy2log, logcnt), logcnt


def _log2phy(phy2log: np.ndarray, logcnt: np.ndarray) -> np.ndarray:
    """``log2phy [L, E, max_copies]``: the slots of each logical expert, ``-1`` padded."""
    num_layers, e = logcnt.shape
    log2phy = np.full((num_layers, e, int(logcnt.max())), -1, dtype=np.int64)
    for li in range(num_layers):
        fill = np.zeros(e, dtype=np.int64)
        for s, x in enumerate(phy2log[li]):
            log2phy[li, x, fill[x]] = s
            fill[x] += 1
    return log2phy


def eplb(
    load: np.ndarray,
    num_gpus: int,
    gpus_per_node: int,
    num_redundant: int = 0,
    num_groups: int | None = None,
    hierarchical: bool = True,
) -> Placement:
    """EPLB as a ``Placement`` (replicas on distinct GPUs).

    Args:
        load: ``P [L, E]``.
        num_gpus: G. gpus_per_node: GPUs per node (nodes = G / gpus_per_node).
        num_redundant: extra slots per layer; ``E + num_redundant`` must be a multiple of G.
        num_groups: expert groups for the hierarchical mode (default: one group per node).
        hierarchical: False = global mode (one group, one node).

    Returns:
        A placement named ``eplb``; ``info`` holds ``num_replicas``, ``mode``, ``phy2log`` shape, copies.
    """
    p = check_load(load)
    e = p.shape[1]
    nodes = check_nodes(num_gpus, gpus_per_node)
    if isinstance(num_redundant, bool) or not isinstance(num_redundant, int) or num_redundant < 0:
        raise InputError(f"eplb: 'num_redundant' must be a non-negative integer, got {num_redundant!r}")
    slots = e + num_redundant
    if slots < num_gpus or slots % num_gpus:
        raise InputError(
            f"eplb: {e} experts + {num_redundant} redundant = {slots} slots must be a multiple of {num_gpus} GPUs "
            f"(and at least {num_gpus})"
        )
    if hierarchical:
        groups, n = (num_groups or nodes), nodes
    else:
        groups, n = 1, 1
    phy2log, _, logcnt = rebalance_experts(p, slots, groups, n, num_gpus)
    placement = Placement.from_physical_to_logical(phy2log, num_gpus, e, name="eplb")
    placement.info = {
        "mode": "hierarchical" if hierarchical else "global",
        "num_replicas": slots,
        "num_groups": groups,
        "num_nodes": n,
        "max_copies": int(logcnt.max()),
    }
    return placement


@schema("placement", "eplb")
@dataclass(frozen=True)
class EPLB(Placer):
    """EPLB-style load balancing with redundant experts.

    Attributes:
        num_redundant: extra expert slots per layer; ``E + num_redundant`` must be a multiple of the GPUs.
        num_groups: expert groups packed onto nodes (``None``: one group per node).
        hierarchical: ``False`` = global mode (one group, one node).
    """

    name = "eplb"
    num_redundant: int = 0
    num_groups: int | None = None
    hierarchical: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()  # the time budget
        if (
            isinstance(self.num_redundant, bool)
            or not isinstance(self.num_redundant, int)
            or self.num_redundant < 0
        ):
            raise ConfigError("num_redundant", f"expected a non-negative integer, got {self.num_redundant!r}")
        if self.num_groups is not None and (not isinstance(self.num_groups, int) or self.num_groups < 1):
            raise ConfigError("num_groups", f"expected a positive integer or null, got {self.num_groups!r}")

    def place(self, problem: PlacementProblem) -> Placement:
        return eplb(
            problem.load,
            problem.num_gpus,
            problem.gpus_per_node,
            num_redundant=self.num_redundant,
            num_groups=self.num_groups,
            hierarchical=self.hierarchical,
        )
