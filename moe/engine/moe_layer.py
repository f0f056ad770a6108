"""One expert-parallel MoE feed-forward: dispatch (all-to-all), expert compute, combine (all-to-all back).

Dropless: every copy is computed (no capacity factor). A token is sent once per destination rank; that rank
returns one partial result (the gate-weighted sum of its experts' outputs for the token), and the token's home
rank adds the partials (Megatron-style combine to the source).

Two paths (``engine.dispatch``): ``fast`` (``ep_moe``: the layout on the device, one count exchange, rows and
metadata packed in one exchange, one grouped GEMM; ``moe.engine.dispatch`` / ``moe.engine.experts``; ``padded``:
the same with the counts inside one fixed-size exchange) and
``legacy`` (``ep_moe_legacy``: the first engine, kept as the benchmark's baseline and as a reference: plan on
the host, counts to the host, separate metadata exchange, a per-expert loop with a ``nonzero`` each).
``engine.overlap=two_batch`` (``ep_moe_two_batch``) splits the tokens in two and runs one half's exchanges
while the other half's experts compute (a second CUDA stream; on a CPU the same schedule, in sequence).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from moe.engine.comm import PhaseClock, all_to_all_rows, exchange_counts
from moe.engine.dispatch import (
    DeviceRoutes,
    HostBuffer,
    Layout,
    exchange,
    layout,
    padded_dispatch,
    received_copies,
    unpack,
)
from moe.engine.experts import StackedExperts
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


def ep_moe_legacy(
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
    ids, weights, gtok = ids.cpu(), weights.cpu(), gtok.cpu()  # the legacy plan runs on the host
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


@dataclass
class LayerRuntime:
    """What the fast path keeps per layer: routes on the device, the stacked experts, a host count buffer."""

    routes: DeviceRoutes
    experts: StackedExperts
    host: HostBuffer
    top_k: int
    padded: bool = False


@dataclass
class InFlight:
    """One (half-)batch between its phases: its layout, received rows and metadata."""

    lay: Layout
    h: torch.Tensor
    meta: torch.Tensor


def dispatch(x: torch.Tensor, ids: torch.Tensor, w: torch.Tensor, gtok: torch.Tensor, rank: int,
             rt: LayerRuntime) -> InFlight:  # fmt: skip
    """Layout, one count exchange and one packed exchange of ``x [n, H]`` (all on ``x``'s device); with
    ``rt.padded`` one exchange of fixed-size buffers that carry the counts too."""
    if rt.padded:
        lay, got = padded_dispatch(x, ids, w, gtok, rank, rt.routes, rt.host, rt.experts.count)
    else:
        lay = layout(x, ids, w, gtok, rank, rt.routes, rt.host, rt.experts.count)
        got = exchange(lay.packed, lay.send, lay.recv)
    h, meta = unpack(got, x.shape[1])
    return InFlight(lay, h, meta)


def compute(f: InFlight, rt: LayerRuntime) -> torch.Tensor:
    """Partial outputs ``[m, H]`` of the received rows: one grouped GEMM over the local experts."""
    rows, slots, w = received_copies(f.meta, rt.top_k, sum(f.lay.per_slot), rt.routes.slots)
    return rt.experts.forward(f.h, rows, slots, w, f.lay.per_slot)


def combine(f: InFlight, partial: torch.Tensor, n: int) -> torch.Tensor:
    """The partials back home (reversed splits), added per token: ``[n, H]``.

    One rank: the rows are the tokens in order, one partial each, so the sum is the partial itself, bit for
    bit (``0.0 + p == p`` unless p is -0.0, and the partials, sums onto +0.0 in ``StackedExperts.forward``,
    never are): no zeros and no ``index_add_``."""
    back = exchange(partial, f.lay.recv, f.lay.send)
    if len(f.lay.send) == 1:
        return back
    return partial.new_zeros((n, partial.shape[1])).index_add_(0, f.lay.rows, back)


def ep_moe(
    x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, gtok: torch.Tensor, rank: int,
    rt: LayerRuntime, clock: PhaseClock,
) -> tuple[torch.Tensor, tuple[int, int, int], torch.Tensor]:  # fmt: skip
    """``ep_moe_legacy``'s result on the fast path (every tensor on ``x``'s device)."""
    t = clock.start()
    f = dispatch(x, ids, weights, gtok, rank, rt)
    i_dispatch = clock.stop(t)
    t = clock.start()
    partial = compute(f, rt)
    i_compute = clock.stop(t)
    t = clock.start()
    out = combine(f, partial, x.shape[0])
    i_combine = clock.stop(t)
    return out, (i_dispatch, i_compute, i_combine), f.lay.sent_counts


class SideStream:
    """A second CUDA stream for the exchanges of ``two_batch`` (no-ops on a CPU, where steps run in order).

    Memory crossing the streams needs no ``record_stream``: every block on the side stream first waits for an
    event of the compute stream (``after(mark())``) and the compute stream waits for the side stream
    (``join``) before any result is used or any tensor of the call is freed, so a block freed on one stream
    can only be reused by work ordered after every use on the other. Code that drops this pairing must call
    ``Tensor.record_stream`` on what it hands across.
    """

    def __init__(self, device: torch.device) -> None:
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def mark(self) -> object | None:
        return torch.cuda.current_stream().record_event() if self.stream is not None else None

    @contextlib.contextmanager
    def after(self, event: object | None) -> Iterator[None]:
        """Run the block on the side stream once ``event`` (of the compute stream) has happened."""
        if self.stream is None:
            yield
            return
        self.stream.wait_event(event)  # type: ignore[arg-type]
        with torch.cuda.stream(self.stream):
            yield

    def join(self) -> None:
        if self.stream is not None:
            torch.cuda.current_stream().wait_stream(self.stream)


def ep_moe_two_batch(
    x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, gtok: torch.Tensor, rank: int,
    rt: LayerRuntime, clock: PhaseClock, side: SideStream,
) -> tuple[torch.Tensor, tuple[int, int, int], torch.Tensor]:  # fmt: skip
    """Two halves: dispatch A | compute A with dispatch B | compute B with combine A | combine B.

    Phases: dispatch = A's dispatch, compute = the two overlapped steps, combine = B's combine.
    """
    n = x.shape[0]
    a, b = slice(0, n // 2), slice(n // 2, n)
    t = clock.start()
    fa = dispatch(x[a], ids[a], weights[a], gtok[a], rank, rt)
    i_dispatch = clock.stop(t)
    t = clock.start()
    ready = side.mark()
    pa = compute(fa, rt)
    with side.after(ready):
        fb = dispatch(x[b], ids[b], weights[b], gtok[b], rank, rt)
    side.join()
    done_a = side.mark()
    pb = compute(fb, rt)
    with side.after(done_a):
        oa = combine(fa, pa, a.stop)
    i_compute = clock.stop(t)
    t = clock.start()
    ob = combine(fb, pb, n - a.stop)
    side.join()
    i_combine = clock.stop(t)
    sent = fa.lay.sent_counts + fb.lay.sent_counts
    return torch.cat([oa, ob]), (i_dispatch, i_compute, i_combine), sent


def ep_moe_split(
    x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, gtok: torch.Tensor, rank: int,
    rt: LayerRuntime, clock: PhaseClock,
) -> tuple[torch.Tensor, tuple[int, int, int], torch.Tensor]:  # fmt: skip
    """``two_batch``'s halves one after the other with no overlap (``engine.overlap=split``): its reference.

    Phases: dispatch = A's dispatch, compute = A's compute and combine and B's dispatch and compute,
    combine = B's combine (the same windows as ``ep_moe_two_batch``).
    """
    n = x.shape[0]
    a, b = slice(0, n // 2), slice(n // 2, n)
    t = clock.start()
    fa = dispatch(x[a], ids[a], weights[a], gtok[a], rank, rt)
    i_dispatch = clock.stop(t)
    t = clock.start()
    oa = combine(fa, compute(fa, rt), a.stop)
    fb = dispatch(x[b], ids[b], weights[b], gtok[b], rank, rt)
    pb = compute(fb, rt)
    i_compute = clock.stop(t)
    t = clock.start()
    ob = combine(fb, pb, n - a.stop)
    i_combine = clock.stop(t)
    return torch.cat([oa, ob]), (i_dispatch, i_compute, i_combine), fa.lay.sent_counts + fb.lay.sent_counts
