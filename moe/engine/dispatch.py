"""The dispatch layout on the device and the packed exchange (``engine.dispatch=fast``, the default).

Per layer and rank, with ``n`` local tokens, ``k`` choices, ``G`` ranks and ``S`` the most experts any rank
holds in the layer:

1. **Layout (device, no host sync).** Each copy's destination ``dest [n, k]`` (the cost model's replica
   rule), a token-per-destination mask ``[G, n]`` (dedupe: one row per token and destination), the rows'
   order (stable ``argsort`` of the mask: destination ascending, token ascending, as the legacy path) and,
   per destination, the rows and the copies each of its local experts will receive (``[G, 1 + S]``).
2. **One count exchange.** That ``[G, 1 + S]`` int64 table goes through one ``all_to_all_single``; the sent
   and received tables come to the host in one copy (pinned on CUDA): the split sizes every engine needs,
   plus the received tokens per local expert (DeepEP's ``num_tokens_per_expert``) for the grouped GEMM.
3. **One packed exchange.** Each row carries ``[H]`` hidden values and its metadata (``k`` int32 slots on the
   destination, -1 where that choice lives elsewhere, and ``k`` float32 gate weights bit-cast to int32),
   bit-cast to the hidden dtype and appended as extra columns, so rows and metadata travel in one
   ``all_to_all_single``.

The receiver sorts its copies by local expert (stable ``argsort``; no ``nonzero``), so the expert kernels
(``moe.engine.experts``) see one contiguous group per expert.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from moe.engine.routing import LayerRoutes


@dataclass(frozen=True)
class DeviceRoutes:
    """``LayerRoutes`` on the compute device, plus ``slots``: S, the most experts a rank holds in the layer."""

    choice: torch.Tensor
    count: torch.Tensor
    local_slot: torch.Tensor
    slots: int

    @classmethod
    def of(cls, routes: LayerRoutes, device: torch.device) -> DeviceRoutes:
        slots = int(routes.local_slot.max()) + 1
        return cls(routes.choice.to(device), routes.count.to(device), routes.local_slot.to(device), slots)


@dataclass
class Layout:
    """One rank's dispatch of one layer.

    Attributes:
        rows: int64 ``[m]`` (device) local token of each sent row, grouped by destination rank.
        meta: int32 ``[m, 2k]`` (device) slots on the destination and bit-cast gate weights.
        send: host ``[G]`` rows sent to each rank; ``recv``: host ``[G]`` rows received from each rank.
        per_slot: host ``[S_here]`` copies this rank's local experts receive in total.
        sent_counts: int64 ``[G]`` (CPU) ``send`` as a tensor (the rank's row of the dispatch matrix).
    """

    rows: torch.Tensor
    meta: torch.Tensor
    send: list[int]
    recv: list[int]
    per_slot: list[int]
    sent_counts: torch.Tensor


class HostBuffer:
    """A reusable host tensor for the count tables (pinned when the device is CUDA)."""

    def __init__(self, device: torch.device) -> None:
        self.pin = device.type == "cuda"
        self._buf: torch.Tensor | None = None

    def get(self, numel: int) -> torch.Tensor:
        if self._buf is None or self._buf.numel() < numel:
            self._buf = torch.empty(numel, dtype=torch.int64, pin_memory=self.pin)
        return self._buf[:numel]


def _plan(
    ids: torch.Tensor, gtok: torch.Tensor, rank: int, r: DeviceRoutes
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(row order ``[G*n]``, destinations ``[n, k]``, counts ``[G, 1+S]``) on the device, from ``ids [n, k]``."""
    n, k = ids.shape
    g = r.choice.shape[0]
    cnt = r.count[rank][ids]
    dest = r.choice[rank][ids, gtok[:, None] % cnt]  # [n, k]
    mask = torch.zeros((g, n), dtype=torch.bool, device=ids.device)
    mask[dest, torch.arange(n, device=ids.device)[:, None].expand(n, k)] = True
    table = torch.zeros((g, 1 + r.slots), dtype=torch.int64, device=ids.device)
    table[:, 0] = mask.sum(1)
    slot = r.local_slot[dest, ids]  # [n, k], >= 0: dest holds the expert
    flat = (dest * (1 + r.slots) + 1 + slot).reshape(-1)
    table.view(-1).index_add_(0, flat, torch.ones_like(flat))
    order = torch.argsort((~mask).reshape(-1).to(torch.int8), stable=True)
    return order, dest, table


def layout(
    ids: torch.Tensor,
    weights: torch.Tensor,
    gtok: torch.Tensor,
    rank: int,
    routes: DeviceRoutes,
    host: HostBuffer,
    local_experts: int,
) -> Layout:
    """The dispatch layout of ``n`` local tokens (``ids``, ``weights [n, k]``, ``gtok [n]`` on the device)."""
    n = ids.shape[0]
    order, dest, table = _plan(ids, gtok, rank, routes)
    recv_table = torch.empty_like(table)
    dist.all_to_all_single(recv_table, table)
    both = host.get(2 * table.numel()).view(2, *table.shape)
    both[0].copy_(table, non_blocking=True)
    both[1].copy_(recv_table, non_blocking=True)
    if table.is_cuda:
        torch.cuda.current_stream().synchronize()
    send = both[0, :, 0].tolist()
    m = sum(send)
    sel = order[:m]
    d, t = sel // n, sel % n
    here = d[:, None] == dest[t]  # [m, k]
    slots = torch.where(here, routes.local_slot[d[:, None], ids[t]], -1).to(torch.int32)
    w = torch.where(here, weights[t].to(torch.float32), 0.0)
    return Layout(
        rows=t,
        meta=torch.cat([slots, w.view(torch.int32)], dim=1),
        send=send,
        recv=both[1, :, 0].tolist(),
        per_slot=both[1, :, 1 : 1 + local_experts].sum(0).tolist(),
        sent_counts=both[0, :, 0].clone(),
    )


def pack(x: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    """Rows ``x [m, H]`` with their int32 metadata ``[m, 2k]`` bit-cast to ``x``'s dtype as extra columns."""
    return torch.cat([x, meta.contiguous().view(x.dtype)], dim=1)


def unpack(packed: torch.Tensor, hidden: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows ``[m, H]``, int32 metadata ``[m, 2k]``) of a packed ``[m, H + extra]`` tensor."""
    return packed[:, :hidden], packed[:, hidden:].contiguous().view(torch.int32)


def exchange(x: torch.Tensor, send: list[int], recv: list[int]) -> torch.Tensor:
    """Rows of ``x [sum(send), C]`` to the ranks; returns ``[sum(recv), C]`` (one ``all_to_all_single``)."""
    out = x.new_empty((sum(recv), *x.shape[1:]))
    dist.all_to_all_single(out, x.contiguous(), output_split_sizes=recv, input_split_sizes=send)
    return out


def received_copies(
    meta: torch.Tensor, top_k: int, copies: int, slots: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(row, slot, weight) of the ``copies`` copies a rank received, sorted by slot (stable), on the device.

    ``meta``: int32 ``[m, 2k]``; ``copies``: the total from the count exchange (no ``nonzero`` sync).
    """
    s = meta[:, :top_k].reshape(-1).to(torch.int64)
    key = torch.where(s >= 0, s, slots)
    order = torch.argsort(key, stable=True)[:copies]
    w = meta[:, top_k:].contiguous().view(torch.float32).reshape(-1)
    return order // top_k, key[order], w[order]
