"""One expert-parallel MoE feed-forward: dispatch (all-to-all), expert compute, combine (all-to-all back).

Dropless: every copy is computed (no capacity factor). A token is sent once per destination rank; that rank
returns one partial result (the gate-weighted sum of its experts' outputs for the token), and the token's home
rank adds the partials (Megatron-style combine to the source).
"""

from __future__ import annotations

import torch

from moe.engine.comm import PhaseClock, all_to_all_rows, exchange_counts
from moe.engine.layers import swiglu
from moe.engine.routing import LayerRoutes, received_entries, send_plan
from moe.engine.weights import ExpertWeights


def local_experts_forward(
    h: torch.Tensor, meta: torch.Tensor, experts: list[ExpertWeights], top_k: int
) -> torch.Tensor:
    """Partial outputs ``[m, H]`` of received rows ``h [m, H]``: sum over a row's local choices of w * expert(h)."""
    rows, slots, w = received_entries(meta, top_k)
    rows, slots, w = rows.to(h.device), slots.to(h.device), w.to(h.device)
    out = torch.zeros_like(h)
    for s, weights in enumerate(experts):
        sel = (slots == s).nonzero(as_tuple=True)[0]
        if sel.numel() == 0:
            continue
        r = rows[sel]
        out.index_add_(0, r, swiglu(h[r], weights) * w[sel, None].to(h.dtype))
    return out


def ep_moe(
    x: torch.Tensor,
    ids: torch.Tensor,
    weights: torch.Tensor,
    gtok: torch.Tensor,
    rank: int,
    routes: LayerRoutes,
    experts: list[ExpertWeights],
    clock: PhaseClock,
) -> tuple[torch.Tensor, tuple[int, int, int], torch.Tensor]:
    """The MoE output of this rank's tokens ``x [n, H]`` (ids, weights ``[n, k]``, gtok ``[n]`` on the CPU).

    Returns the output ``[n, H]``, the clock indices of (dispatch, compute, combine), and int64 ``[G]`` the
    token rows this rank sent to each rank (its row of the dispatch matrix; entry ``rank`` stays local).
    """
    k = ids.shape[1]
    plan = send_plan(ids, weights, gtok, rank, routes)
    send = plan.counts.tolist()
    t = clock.start()
    recv = exchange_counts(plan.counts, x.device).tolist()
    h = all_to_all_rows(x[plan.rows.to(x.device)], send, recv)
    meta = all_to_all_rows(plan.meta.to(x.device), send, recv)
    i_dispatch = clock.stop(t)
    t = clock.start()
    partial = local_experts_forward(h, meta, experts, k)
    i_compute = clock.stop(t)
    t = clock.start()
    back = all_to_all_rows(partial, recv, send)
    out = torch.zeros_like(x).index_add_(0, plan.rows.to(x.device), back)
    i_combine = clock.stop(t)
    return out, (i_dispatch, i_compute, i_combine), plan.counts
