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
    """``LayerRoutes`` on the compute device, plus ``slots``: S, the most experts a rank holds in the layer,
    and ``replicated``: some expert has several candidate ranks (else ``choice[:, :, 0]`` is the rank)."""

    choice: torch.Tensor
    count: torch.Tensor
    local_slot: torch.Tensor
    slots: int
    replicated: bool

    @classmethod
    def of(cls, routes: LayerRoutes, device: torch.device) -> DeviceRoutes:
        slots = int(routes.local_slot.max()) + 1
        return cls(routes.choice.to(device), routes.count.to(device), routes.local_slot.to(device), slots,
                   bool((routes.count > 1).any()))  # fmt: skip

    def arange(self, n: int) -> torch.Tensor:
        """int64 ``[n]`` 0..n-1 on the device (cached per n)."""
        cache = self.__dict__.setdefault("_arange", {})
        if n not in cache:
            cache[n] = torch.arange(n, device=self.choice.device)
        return cache[n]

    def meta_fill(self, k: int) -> torch.Tensor:
        """int32 ``[2k]``: slot -1 and weight 0.0 (bits 0), the metadata of a choice that lives elsewhere."""
        cache = self.__dict__.setdefault("_fill", {})
        if k not in cache:
            cache[k] = torch.tensor([-1] * k + [0] * k, dtype=torch.int32, device=self.choice.device)
        return cache[k]


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
    ids: torch.Tensor, weights: torch.Tensor, gtok: torch.Tensor, rank: int, r: DeviceRoutes
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """On the device, from ``ids [n, k]``: (row order ``[G*n]``: the sent (destination, token) pairs first,
    per copy int32 ``[n, 3k]`` = destination | slot there | gate weight bits, counts ``[G, 1+S]``)."""
    n, k = ids.shape
    g = r.choice.shape[0]
    if r.replicated:
        dest = r.choice[rank][ids, gtok[:, None] % r.count[rank][ids]]  # [n, k]
    else:
        dest = r.choice[rank, :, 0][ids]
    mask = torch.zeros(g * n, dtype=torch.bool, device=ids.device)
    mask[(dest * n + r.arange(n)[:, None]).reshape(-1)] = True
    slot = r.local_slot[dest, ids]  # [n, k], >= 0: dest holds the expert
    table = torch.bincount((dest * (1 + r.slots) + 1 + slot).reshape(-1), minlength=g * (1 + r.slots))
    table = table.view(g, 1 + r.slots)
    table[:, 0] = mask.view(g, n).sum(1)
    order = torch.argsort(mask.logical_not().to(torch.int8), stable=True)
    per_copy = torch.cat(
        [dest.to(torch.int32), slot.to(torch.int32), weights.to(torch.float32).view(torch.int32)], 1
    )
    return order, per_copy, table


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
    n, k = ids.shape
    order, per_copy, table = _plan(ids, weights, gtok, rank, routes)
    recv_table = torch.empty_like(table)
    dist.all_to_all_single(recv_table, table)
    both = host.get(2 * table.numel()).view(2, *table.shape)
    both[0].copy_(table, non_blocking=True)
    both[1].copy_(recv_table, non_blocking=True)
    if table.is_cuda:
        torch.cuda.current_stream().synchronize()
    sent, got = both.tolist()
    send = [row[0] for row in sent]
    sel = order[: sum(send)]
    t = sel % n
    c = per_copy[t]  # [m, 3k]
    here = (c[:, :k] == (sel // n).to(torch.int32)[:, None]).repeat(1, 2)  # [m, 2k]
    return Layout(
        rows=t,
        meta=torch.where(here, c[:, k:], routes.meta_fill(k)),
        send=send,
        recv=[row[0] for row in got],
        per_slot=[sum(row[1 + s] for row in got) for s in range(local_experts)],
        sent_counts=torch.tensor(send, dtype=torch.int64),
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

    ``meta``: int32 ``[m, 2k]``; ``copies``: the total from the count exchange (no ``nonzero`` sync): the
    ``m * k - copies`` choices that live elsewhere (slot -1) sort first and are skipped.
    """
    del slots
    s = meta[:, :top_k].reshape(-1)
    order = torch.argsort(s, stable=True)[s.numel() - copies :]
    w = meta[:, top_k:].reshape(-1).view(torch.float32)
    return order // top_k, s[order].to(torch.int64), w[order]
