"""Who sends which token where: the send plan of one MoE layer on one rank, as pure tensor functions.

Rules (the cost model's, ``moe.cost_model``): a token's copy for expert e goes to one of e's replicas, chosen
by the ``eval.replica_choice`` rule through ``moe.cost_model.route_table`` (candidate ``t % n`` for the
token's global index t); a token is sent once per destination rank (dedupe), carrying, for each of its k
choices, the expert's slot on that rank (or -1) and the gate weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from moe.cost_model import route_table
from moe.placement.base import Placement


@dataclass(frozen=True)
class LayerRoutes:
    """One layer of a placement, as the engine uses it (``G`` ranks, ``E`` experts, ``M`` most replicas).

    Attributes:
        choice: int64 ``[G, E, M]``: candidate ranks of expert e for a token on rank s (-1 unused).
        count: int64 ``[G, E]``: candidates; the token with global index t takes ``choice[s, e, t % count]``.
        local_slot: int64 ``[G, E]``: index of expert e in rank r's sorted expert list, -1 if r lacks it.
    """

    choice: torch.Tensor
    count: torch.Tensor
    local_slot: torch.Tensor


def layer_routes(placement: Placement, node_of: np.ndarray, rule: str) -> list[LayerRoutes]:
    """Every layer's ``LayerRoutes`` (``rule``: ``even`` or ``local``, ``node_of``: int ``[G]``)."""
    table = route_table(placement, node_of, rule)
    out = []
    for li, layer in enumerate(placement.assignment):
        slot = np.full((placement.num_gpus, placement.num_experts), -1, dtype=np.int64)
        for g, experts in enumerate(layer):
            slot[g, experts] = np.arange(len(experts))
        out.append(
            LayerRoutes(
                choice=torch.from_numpy(np.ascontiguousarray(table.choice[li])),
                count=torch.from_numpy(np.ascontiguousarray(table.count[li])),
                local_slot=torch.from_numpy(slot),
            )
        )
    return out


@dataclass(frozen=True)
class SendPlan:
    """What one rank sends in one layer's dispatch (``m`` rows: one per token and destination rank).

    Attributes:
        rows: int64 ``[m]`` local token index of each sent row; rows are grouped by destination rank
            (ascending), tokens ascending within a rank.
        counts: int64 ``[G]`` rows sent to each rank (the all-to-all's input split sizes).
        meta: float32 ``[m, 2k]``: columns ``0..k-1`` the expert's slot on the destination for each of the
            token's k choices (-1 where that choice lives elsewhere), columns ``k..2k-1`` the gate weights.
        dest: int64 ``[n, k]`` destination rank of every copy.
    """

    rows: torch.Tensor
    counts: torch.Tensor
    meta: torch.Tensor
    dest: torch.Tensor


def send_plan(
    ids: torch.Tensor, weights: torch.Tensor, gtok: torch.Tensor, rank: int, routes: LayerRoutes
) -> SendPlan:
    """The dispatch plan of ``n`` local tokens.

    Args:
        ids: int64 ``[n, k]`` chosen experts.
        weights: float ``[n, k]`` gate weights.
        gtok: int64 ``[n]`` global token index (position in the replayed token stream; picks replicas).
        rank: this rank.
        routes: the layer's routes.
    """
    n, k = ids.shape
    g = routes.choice.shape[0]
    cnt = routes.count[rank][ids]
    dest = routes.choice[rank][ids, gtok[:, None] % cnt]
    local = torch.arange(n, dtype=torch.int64)[:, None]
    keys, inverse = torch.unique((dest * n + local).reshape(-1), sorted=True, return_inverse=True)
    inverse = inverse.view(n, k)
    meta = torch.full((keys.numel(), 2 * k), -1.0, dtype=torch.float32)
    meta[:, k:] = 0.0
    cols = torch.arange(k, dtype=torch.int64).expand(n, k)
    meta[inverse, cols] = routes.local_slot[dest, ids].to(torch.float32)
    meta[inverse, cols + k] = weights.to(torch.float32)
    return SendPlan(rows=keys % n, counts=torch.bincount(keys // n, minlength=g), meta=meta, dest=dest)


def received_entries(meta: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(row, slot, weight) of every copy a rank received: int64 ``[c]``, int64 ``[c]``, float32 ``[c]``."""
    slots = meta[:, :top_k]
    rows, cols = (slots >= 0).nonzero(as_tuple=True)
    return rows, slots[rows, cols].to(torch.int64), meta[:, top_k:][rows, cols]
