"""The dispatch layout on the device and the packed exchange (``engine.dispatch=fast``, the default).

Per layer and rank, with ``n`` local tokens, ``k`` choices, ``G`` ranks and ``S`` the most experts any rank
holds in the layer:

1. **Layout (device, no host sync).** Each copy's destination (the cost model's replica rule; without
   replicas one gather of a per-rank ``[E, 3]`` table made once: destination, count-table column, slot), the
   token hits per destination ``[G, n]`` (one ``bincount``; dedupe: one row per token and destination) and,
   per destination, the rows and the copies each of its local experts will receive (``[G, 1 + S]``). At
   these sizes on a CPU each op costs far more than its data (more so right after the expert GEMMs, with
   cold caches), so the layout is written for few ops.
2. **One count exchange**, started without waiting (``CountExchange``): that ``[G, 1 + S]`` int64 table
   goes through one ``all_to_all_single``: the split sizes every engine needs, plus the received tokens per
   local expert (DeepEP's ``num_tokens_per_expert``) for the grouped GEMM. On a CPU the sent table is
   already on the host, so the rows are gathered and packed while the exchange runs; on CUDA both tables
   come to the host in one copy (pinned) and one sync. One rank has no one to exchange with: no collective.
3. **Rows.** The sent (destination, token) pairs in the legacy order (destination, then token, ascending:
   ``nonzero_static`` of the hits, sized by the counts), each row ``[H]`` hidden values plus its metadata
   (``k`` int32 slots on the destination, -1 where that choice lives elsewhere, and ``k`` float32 gate
   weights bit-cast to int32), bit-cast to the hidden dtype and appended as extra columns (written straight
   into the packed buffer), so rows and metadata travel in one ``all_to_all_single``. One rank: the rows are
   the tokens in order and every choice lives here (no hits, no selection).

``engine.dispatch=padded`` (``padded_dispatch``) drops the count exchange: each rank sends every rank a
fixed-size buffer (a header with its count row, then up to ``n`` rows), one equal-split exchange for counts,
rows and metadata, at the price of sending unused rows (DeepEP's low-latency layout).

The receiver sorts its copies by local expert (one stable ``sort``; no ``nonzero``), so the expert kernels
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

    def zeros(self, n: int) -> torch.Tensor:
        """int64 ``[n]`` zeros on the device (cached per n): the destination of every row on one rank."""
        cache = self.__dict__.setdefault("_zeros", {})
        if n not in cache:
            cache[n] = torch.zeros(n, dtype=torch.int64, device=self.choice.device)
        return cache[n]

    def copy_tokens(self, n: int, k: int) -> torch.Tensor:
        """int64 ``[n * k]``: the local token of each copy of ``ids [n, k]`` flattened (t repeated k times)."""
        cache = self.__dict__.setdefault("_copy_tokens", {})
        if (n, k) not in cache:
            cache[(n, k)] = self.arange(n).repeat_interleave(k)
        return cache[(n, k)]

    def lookup(self, rank: int) -> torch.Tensor:
        """int32 ``[E, 3]`` per expert, for tokens on ``rank`` when no expert has replicas: its one candidate
        rank d, its count-table column ``d * (1 + S) + 1 + slot`` and its slot on d (made once per rank)."""
        cache = self.__dict__.setdefault("_lookup", {})
        if rank not in cache:
            dest = self.choice[rank, :, 0]
            slot = self.local_slot[dest, torch.arange(dest.numel(), device=dest.device)]
            cache[rank] = torch.stack([dest, dest * (1 + self.slots) + 1 + slot, slot], 1).to(torch.int32)
        return cache[rank]

    def meta_fill(self, k: int, rows: int) -> torch.Tensor:
        """int32 ``[rows, 2k]``: per row k slots -1 and k weights 0.0 (bits 0), the metadata of choices that
        live elsewhere (a contiguous slice of a cached buffer: ``where`` is several times faster without a
        broadcast operand on a CPU)."""
        cache = self.__dict__.setdefault("_fill", {})
        if k not in cache or cache[k].shape[0] < rows:
            row = torch.tensor([-1] * k + [0] * k, dtype=torch.int32, device=self.choice.device)
            cache[k] = row.repeat(max(rows, 2 * cache[k].shape[0] if k in cache else rows), 1)
        return cache[k][:rows]


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
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """On the device, from ``ids [n, k]``: (token hits per destination int64 ``[G, n]`` (> 0: the token
    sends that rank a row), per copy int32 ``[n, 4k]`` = slot there | gate weight bits | destination |
    destination, int64 counts ``[G, 1+S]``).

    Without replicas one gather of the rank's ``[E, 3]`` lookup gives each copy's destination, count-table
    column and slot: the per-op cost, not the data, dominates at these sizes on a CPU. One rank: every copy
    lives here, so the hits are ``None`` (every token sends one row) and per copy is ``[n, 2k]`` (slot | bits).
    """
    n, k = ids.shape
    g, width = r.choice.shape[0], 1 + r.slots
    flat = ids.reshape(-1)
    if r.replicated:
        dest = r.choice[rank][ids, gtok[:, None] % r.count[rank][ids]].view(-1)  # [n * k]
        e = r.local_slot.shape[1]
        slot = r.local_slot.view(-1).index_select(0, torch.add(flat, dest, alpha=e))  # >= 0: dest has it
        code = torch.add(slot, dest, alpha=width).add_(1)
        slot, dest = slot.to(torch.int32), dest.to(torch.int32)
    else:
        dest, code, slot = r.lookup(rank).index_select(0, flat).unbind(1)  # index_select: CPU's fast gather
    table = torch.bincount(code, minlength=g * width).view(g, width)
    bits = weights.to(torch.float32).view(torch.int32)
    if g == 1:
        table[0, 0] = n
        return None, torch.cat([slot.view(n, k), bits], 1), table
    hits = torch.bincount(torch.add(r.copy_tokens(n, k), dest, alpha=n), minlength=g * n).view(g, n)
    table[:, 0] = torch.count_nonzero(hits, dim=1)
    dest = dest.view(n, k)
    return hits, torch.cat([slot.view(n, k), bits, dest, dest], 1), table


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
    x: torch.Tensor, hits: torch.Tensor | None, per_copy: torch.Tensor, m: int, r: DeviceRoutes
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(destination ``[m]``, local token ``[m]``, int32 metadata ``[m, 2k]``, packed rows ``[m, H + extra]``)
    of the ``m`` sent rows, destination-major and token-ascending (the legacy path's order).

    The rows and the metadata are written straight into the packed buffer (``meta`` is a view of it) where
    the metadata columns start 4-byte aligned (fp32, or bf16 with an even H); else ``pack`` concatenates.
    One rank (``hits`` ``None``): the rows are the tokens in order and ``per_copy`` is their metadata."""
    h = x.shape[1]
    if hits is None:
        t = r.arange(m)
        if x.dtype == torch.float32:
            packed = torch.cat([x, per_copy.view(torch.float32)], 1)
            return r.zeros(m), t, packed[:, h:].view(torch.int32), packed
        return r.zeros(m), t, per_copy, pack(x, per_copy)
    k = per_copy.shape[1] // 4
    pairs = torch.nonzero_static(hits, size=m)  # [m, 2] (destination, token), both ascending
    d, t = pairs[:, 0], pairs[:, 1].contiguous()
    chosen = per_copy.index_select(0, t)  # [m, 4k]
    here = chosen[:, 2 * k :] == d.to(torch.int32)[:, None]  # [m, 2k]: the choice lives on the row's rank
    fill = r.meta_fill(k, m)
    if (h * x.element_size()) % 4:
        meta = torch.where(here, chosen[:, : 2 * k], fill)
        return d, t, meta, pack(x.index_select(0, t), meta)
    packed = x.new_empty((m, h + 2 * k * 4 // x.element_size()))
    meta = packed[:, h:].view(torch.int32)  # [m, 2k]
    torch.index_select(x, 0, t, out=packed[:, :h])
    torch.where(here, chosen[:, : 2 * k], fill, out=meta)
    return d, t, meta, packed


def _layout(t: torch.Tensor, meta: torch.Tensor, packed: torch.Tensor, send: list[int],
            got: list[list[int]], local_experts: int) -> Layout:  # fmt: skip
    return Layout(
        rows=t,
        meta=meta,
        packed=packed,
        send=send,
        recv=[row[0] for row in got],
        per_slot=[sum(col) for col in zip(*got, strict=True)][1 : 1 + local_experts],
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
    hits, per_copy, table = _plan(ids, weights, gtok, rank, routes)
    counts = CountExchange(table, host)
    send = [row[0] for row in counts.sent()]
    _, t, meta, packed = _sent_rows(x, hits, per_copy, sum(send), routes)
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
    hits, per_copy, table = _plan(ids, weights, gtok, rank, routes)
    send = [row[0] for row in _host_table(table, host)]
    d, t, meta, packed = _sent_rows(x, hits, per_copy, sum(send), routes)
    g, width = table.shape[0], packed.shape[1]
    cells = table.shape[1] * 4 // packed.element_size()  # the count row's int32 values in hidden-dtype cells
    hdr = -(-cells // width)
    buf = packed.new_empty((g, hdr + n, width))
    head = packed.new_zeros((g, hdr * width))
    head[:, :cells] = table.to(torch.int32).view(packed.dtype)
    buf[:, :hdr] = head.view(g, hdr, width)
    sent = table[:, 0]
    start = (sent.cumsum(0) - sent)[d]  # first sent row of each row's destination
    idx = d * (hdr + n) + hdr + routes.arange(d.numel()) - start
    buf.view(-1, width).index_copy_(0, idx, packed)
    out = torch.empty_like(buf)
    dist.all_to_all_single(out, buf)  # one rank too: the exchange is what the floor measures
    got_table = out[:, :hdr].reshape(g, -1)[:, :cells].contiguous().view(torch.int32)
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
    """(row int64, slot int32, weight) of the ``copies`` copies a rank received, sorted by slot (stable), on
    the device.

    ``meta``: int32 ``[m, 2k]``; ``copies``: the total from the count exchange (no ``nonzero`` sync): the
    ``m * k - copies`` choices that live elsewhere (slot -1) sort first and are skipped. The weights are
    taken straight from ``meta``'s (strided) weight columns.
    """
    del slots
    sorted_slots, order = torch.sort(meta[:, :top_k].reshape(-1), stable=True)
    order = order[order.numel() - copies :]
    w = torch.take(meta[:, top_k:].view(torch.float32), order)
    return torch.div(order, top_k, rounding_mode="floor"), sorted_slots[sorted_slots.numel() - copies :], w
