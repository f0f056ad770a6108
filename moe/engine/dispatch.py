"""The dispatch layout on the device and the packed exchange (``engine.dispatch=fast``, the default).

Per layer and rank, with ``n`` local tokens, ``k`` choices, ``G`` ranks and ``S`` the most experts any rank
holds in the layer:

1. **Layout (device, no host sync).** Each copy's destination ``dest [n, k]`` (the cost model's replica
   rule), a token-per-destination mask ``[G, n]`` (dedupe: one row per token and destination) and, per
   destination, the rows and the copies each of its local experts will receive (``[G, 1 + S]``).
2. **One count exchange**, started without waiting (``CountExchange``): that ``[G, 1 + S]`` int64 table
   goes through one ``all_to_all_single``: the split sizes every engine needs, plus the received tokens per
   local expert (DeepEP's ``num_tokens_per_expert``) for the grouped GEMM. On a CPU the sent table is
   already on the host, so the rows are gathered and packed while the exchange runs; on CUDA both tables
   come to the host in one copy (pinned) and one sync. One rank has no one to exchange with: no collective.
3. **Rows.** The sent (destination, token) pairs in the legacy order (destination, then token, ascending:
   ``nonzero_static`` of the mask, sized by the counts), each row ``[H]`` hidden values plus its metadata
   (``k`` int32 slots on the destination, -1 where that choice lives elsewhere, and ``k`` float32 gate
   weights bit-cast to int32), bit-cast to the hidden dtype and appended as extra columns, so rows and
   metadata travel in one ``all_to_all_single``.

``engine.dispatch=padded`` (``padded_dispatch``) drops the count exchange: each rank sends every rank a
fixed-size buffer (a header with its count row, then up to ``n`` rows), one equal-split exchange for counts,
rows and metadata, at the price of sending unused rows (DeepEP's low-latency layout).

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

    def first(self, rank: int) -> torch.Tensor:
        """int64 ``[E]`` the one candidate rank of each expert for tokens on ``rank`` (no replicas)."""
        cache = self.__dict__.setdefault("_first", {})
        if rank not in cache:
            cache[rank] = self.choice[rank, :, 0].contiguous()
        return cache[rank]

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
        packed: ``[m, H + extra]`` (device) the rows' hidden states with ``meta`` appended (``pack``).
        send: host ``[G]`` rows sent to each rank; ``recv``: host ``[G]`` rows received from each rank.
        per_slot: host ``[S_here]`` copies this rank's local experts receive in total.
        sent_counts: int64 ``[G]`` (CPU) ``send`` as a tensor (the rank's row of the dispatch matrix).
    """

    rows: torch.Tensor
    meta: torch.Tensor
    packed: torch.Tensor
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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """On the device, from ``ids [n, k]``: (token-per-destination mask bool ``[G, n]``, int64 destination of
    each copy ``[n, k]``, per copy int32 ``[n, 2k]`` = slot there | gate weight bits, counts ``[G, 1+S]``)."""
    n, k = ids.shape
    g = r.choice.shape[0]
    if r.replicated:
        dest = r.choice[rank][ids, gtok[:, None] % r.count[rank][ids]]  # [n, k]
    else:
        dest = r.first(rank).index_select(0, ids.view(-1)).view(n, k)  # index_select: CPU's fast gather
    mask = torch.zeros((g, n), dtype=torch.bool, device=ids.device)
    mask.view(-1).index_fill_(0, (dest * n + r.arange(n)[:, None]).view(-1), True)
    e = r.local_slot.shape[1]
    slot = r.local_slot.view(-1).index_select(0, (dest * e + ids).view(-1)).view(n, k)  # >= 0: dest has it
    table = torch.bincount((dest * (1 + r.slots) + 1 + slot).view(-1), minlength=g * (1 + r.slots))
    table = table.view(g, 1 + r.slots)
    table[:, 0] = mask.sum(1)
    per_copy = torch.cat([slot.to(torch.int32), weights.to(torch.float32).view(torch.int32)], 1)
    return mask, dest, per_copy, table


class CountExchange:
    """The ``[G, 1+S]`` count tables' one ``all_to_all_single``, started without waiting for it.

    On a CPU the sent table is already on the host, so the rows are packed while the exchange runs; on CUDA
    both halves come to the host in one copy (a pinned buffer) and one sync. One rank exchanges with itself
    only: its received table is its sent one, and no collective runs.
    """

    def __init__(self, table: torch.Tensor, host: HostBuffer) -> None:
        self.table, self.host = table, host
        self.recv = table
        self.work = None
        if table.shape[0] > 1:
            self.recv = torch.empty_like(table)
            self.work = dist.all_to_all_single(self.recv, table, async_op=True)

    def sent(self) -> list[list[int]]:
        """The sent table on the host (CPU: no wait for the exchange)."""
        if not self.table.is_cuda:
            return self.table.tolist()
        self._both = self._to_host()
        return self._both[0]

    def received(self) -> list[list[int]]:
        """The received table on the host (waits for the exchange)."""
        if self.table.is_cuda:
            return self._both[1]
        if self.work is not None:
            self.work.wait()
        return self.recv.tolist()

    def _to_host(self) -> list[list[list[int]]]:
        if self.work is not None:
            self.work.wait()
        both = self.host.get(2 * self.table.numel()).view(2, *self.table.shape)
        both[0].copy_(self.table, non_blocking=True)
        both[1].copy_(self.recv, non_blocking=True)
        torch.cuda.current_stream().synchronize()
        return both.tolist()


def _sent_rows(
    x: torch.Tensor, mask: torch.Tensor, dest: torch.Tensor, per_copy: torch.Tensor, m: int, r: DeviceRoutes
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(destination ``[m]``, local token ``[m]``, int32 metadata ``[m, 2k]``, packed rows ``[m, H + extra]``)
    of the ``m`` sent rows, destination-major and token-ascending (the legacy path's order)."""
    k = dest.shape[1]
    pairs = torch.nonzero_static(mask, size=m)  # [m, 2] (destination, token), both ascending
    d, t = pairs[:, 0], pairs[:, 1].contiguous()
    here = (dest.index_select(0, t) == d[:, None])[:, None, :]  # [m, 1, k]
    fill = r.meta_fill(k).view(2, k)
    meta = torch.where(here, per_copy.index_select(0, t).view(-1, 2, k), fill).view(-1, 2 * k)
    return d, t, meta, pack(x.index_select(0, t), meta)


def _layout(t: torch.Tensor, meta: torch.Tensor, packed: torch.Tensor, send: list[int],
            got: list[list[int]], local_experts: int) -> Layout:  # fmt: skip
    return Layout(
        rows=t,
        meta=meta,
        packed=packed,
        send=send,
        recv=[row[0] for row in got],
        per_slot=[sum(row[1 + s] for row in got) for s in range(local_experts)],
        sent_counts=torch.tensor(send, dtype=torch.int64),
    )


def layout(
    x: torch.Tensor,
    ids: torch.Tensor,
    weights: torch.Tensor,
    gtok: torch.Tensor,
    rank: int,
    routes: DeviceRoutes,
    host: HostBuffer,
    local_experts: int,
) -> Layout:
    """The dispatch layout of ``n`` local tokens (``x [n, H]``, ``ids``, ``weights [n, k]``, ``gtok [n]`` on
    the device), with the packed rows ready to send (``engine.dispatch=fast``: one count exchange)."""
    mask, dest, per_copy, table = _plan(ids, weights, gtok, rank, routes)
    counts = CountExchange(table, host)
    send = [row[0] for row in counts.sent()]
    _, t, meta, packed = _sent_rows(x, mask, dest, per_copy, sum(send), routes)
    return _layout(t, meta, packed, send, counts.received(), local_experts)


def _host_table(table: torch.Tensor, host: HostBuffer) -> list[list[int]]:
    if not table.is_cuda:
        return table.tolist()
    buf = host.get(table.numel()).view(table.shape)
    buf.copy_(table, non_blocking=True)
    torch.cuda.current_stream().synchronize()
    return buf.tolist()


def padded_dispatch(
    x: torch.Tensor,
    ids: torch.Tensor,
    weights: torch.Tensor,
    gtok: torch.Tensor,
    rank: int,
    routes: DeviceRoutes,
    host: HostBuffer,
    local_experts: int,
) -> tuple[Layout, torch.Tensor]:
    """``engine.dispatch=padded``: counts, rows and metadata in one equal-split exchange (no count exchange).

    Every rank holds the same ``n`` tokens (``engine.batch_tokens`` is divisible by the world size), so at
    most ``n`` rows go to any one rank: each rank sends every rank a buffer of ``h + n`` rows, ``h`` header
    rows with its ``[1+S]`` count row (int32 bit-cast to the hidden dtype) and then its rows, the rest unused
    (DeepEP's low-latency layout). The receiver reads the counts from the headers and keeps the used rows.
    Returns the layout and the received packed rows ``[sum(recv), H + extra]`` (source-major, as ``fast``).
    """
    n = x.shape[0]
    mask, dest, per_copy, table = _plan(ids, weights, gtok, rank, routes)
    send = [row[0] for row in _host_table(table, host)]
    d, t, meta, packed = _sent_rows(x, mask, dest, per_copy, sum(send), routes)
    g, width = table.shape[0], packed.shape[1]
    per_row = width * packed.element_size() // 4  # int32 values per row
    hdr = -(-table.shape[1] // per_row)
    buf = packed.new_empty((g, hdr + n, width))
    head = torch.zeros((g, hdr * per_row), dtype=torch.int32, device=x.device)
    head[:, : table.shape[1]] = table
    buf[:, :hdr] = head.view(packed.dtype).view(g, hdr, width)
    sent = table[:, 0]
    start = (sent.cumsum(0) - sent)[d]  # first sent row of each row's destination
    idx = d * (hdr + n) + hdr + routes.arange(d.numel()) - start
    buf.view(-1, width).index_copy_(0, idx, packed)
    out = torch.empty_like(buf)
    dist.all_to_all_single(out, buf)  # one rank too: the exchange is what the floor measures
    got_table = out[:, :hdr].reshape(g, -1).view(torch.int32)[:, : table.shape[1]]
    got = _host_table(got_table.to(torch.int64), host)
    recv = torch.cat([out[s, hdr : hdr + row[0]] for s, row in enumerate(got)])
    return _layout(t, meta, packed, send, got, local_experts), recv


def pack(x: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    """Rows ``x [m, H]`` with their int32 metadata ``[m, 2k]`` bit-cast to ``x``'s dtype as extra columns."""
    return torch.cat([x, meta.contiguous().view(x.dtype)], dim=1)


def unpack(packed: torch.Tensor, hidden: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows ``[m, H]``, int32 metadata ``[m, 2k]``) of a packed ``[m, H + extra]`` tensor."""
    meta = packed[:, hidden:]
    if meta.element_size() != 4:  # bf16: two columns per int32 need an aligned copy; fp32 is a plain view
        meta = meta.contiguous()
    return packed[:, :hidden], meta.view(torch.int32)


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
    sorted_slots, order = torch.sort(meta[:, :top_k].reshape(-1), stable=True)
    skip = order.numel() - copies
    w = meta[:, top_k:].view(torch.float32).reshape(-1)
    order = order[skip:]
    return order // top_k, sorted_slots[skip:].to(torch.int64), w.index_select(0, order)
