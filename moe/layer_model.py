"""The cost model one layer at a time, for searches that change one layer's placement and replay it thousands of
times (MoETuner+'s local search, re-placement gains).

``LayerModel.time`` gives exactly the number ``evaluate_placement`` would give for that layer (the MoE-layer
tail, dispatch + compute + combine, summed over batches; bit for bit), but computes only what that number
needs: no per-token means, no ``Placement`` validation, and, for the ``even`` replica rule (or no replicas),
the layer's route table built with array operations instead of a loop over experts. Token positions after
the layer follow the same rules (``moe.cost_model.next_positions``); the majority rule's tie-break hash is
computed once per model instead of once per call.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from moe.cost_model import (
    EvalOptions,
    Fabric,
    _first_copies,
    _Replay,
    _replay_layer,
    _start_positions,
    route_table,
    token_hash,
)
from moe.placement.base import Layer, Placement
from moe.topology import Topology


def layer_holders(layer: Layer, num_experts: int) -> np.ndarray:
    """bool ``[G, E]``: GPU g holds a copy of expert e (``layer[g]``: the expert ids on GPU g)."""
    held = np.zeros((len(layer), num_experts), dtype=bool)
    for g, experts in enumerate(layer):
        held[g, experts] = True
    return held


def even_candidates(held: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ``even`` replica rule's candidates of one layer: (int64 ``[E, M]`` holder GPUs of each expert in
    ascending order, -1 past the last; int64 ``[E]`` their number). Same order as ``route_table``'s."""
    count = held.sum(axis=0).astype(np.int64)  # [E]
    m = int(count.max())
    order = np.argsort(~held, axis=0, kind="stable")[:m].T  # [E, M]: holders first, ascending
    return np.where(np.arange(m)[None, :] < count[:, None], order, -1), count


@dataclass(frozen=True)
class LayerReplay:
    """One layer's replay (``LayerModel.replay``), kept so that a move can be replayed on the tokens it touches.

    Attributes:
        dest: int64 ``[k, T]`` GPU of every copy; first: bool ``[k, T]`` the copy is sent (dedupe);
        nxt: int64 ``[T]`` positions after the layer; load: int64 ``[nb, G]`` copies per batch and GPU;
        d_cnt, c_cnt: int64 ``[nb, G, G]`` tokens per (batch, from, to) at dispatch and at combine;
        time: seconds summed over batches (``LayerModel.tail`` of the counts).
    """

    dest: np.ndarray
    first: np.ndarray
    nxt: np.ndarray
    load: np.ndarray
    d_cnt: np.ndarray
    c_cnt: np.ndarray
    time: float


@dataclass(frozen=True)
class Move:
    """A layer replayed after a move on the tokens it touches (``LayerModel.moved``): ``tok`` int64 ``[t]``,
    and ``part``, whose ``dest``, ``first`` ``[k, t]`` and ``nxt`` ``[t]`` are those tokens' and whose counts
    and time are the whole layer's after the move."""

    tok: np.ndarray
    part: LayerReplay

    @property
    def time(self) -> float:
        return self.part.time

    @property
    def nxt(self) -> np.ndarray:
        return self.part.nxt

    def applied(self, rep: LayerReplay) -> LayerReplay:
        """``rep`` with this move taken (new arrays; ``rep`` is unchanged)."""
        dest, first, nxt = rep.dest.copy(), rep.first.copy(), rep.nxt.copy()
        dest[:, self.tok], first[:, self.tok], nxt[self.tok] = self.part.dest, self.part.first, self.part.nxt
        return dataclasses.replace(self.part, dest=dest, first=first, nxt=nxt)


def _recount(cnt: np.ndarray, before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """int64 counts ``cnt`` (any shape) with the keys ``before`` taken out and ``after`` put in."""
    size = cnt.size
    delta = np.bincount(after, minlength=size) - np.bincount(before, minlength=size)
    return cnt + delta.reshape(cnt.shape)


class LayerModel:
    """The cost model one layer at a time (see the module docstring).

    ``time(li, layer, src)`` replays layer ``li`` of ``experts`` with that layer's assignment ``layer``
    (``layer[g]``: expert ids on GPU g) from token positions ``src`` and returns the MoE-layer tail time
    summed over batches (seconds, as ``CostReport.batch_layer_tail_s`` summed) and the positions ``[T]``
    after it. ``forward(assignment)`` chains all layers. Same rules as ``evaluate_placement``.

    Attributes:
        by_layer: int64 ``[L, k, T]`` the expert of every copy, ``T`` = whole batches of the trace.
        n, nb: tokens per batch, batches.
    """

    def __init__(
        self, experts: np.ndarray, topology: Topology, options: EvalOptions, slot_order: str, num_experts: int
    ) -> None:
        experts = np.asarray(experts)
        t_all = experts.shape[0]
        self.n = min(options.batch_tokens or t_all, t_all)
        self.nb = t_all // self.n
        used = self.nb * self.n
        self.by_layer = np.ascontiguousarray(experts[:used].transpose(1, 2, 0)).astype(np.int64)
        self.tok = np.arange(used, dtype=np.int64)
        self.g = topology.num_gpus
        self.start = _start_positions(self.tok % self.n, self.n, self.g, options.first_layer_start)
        self.topology, self.options, self.slot_order, self.num_experts = (
            topology,
            options,
            slot_order,
            num_experts,
        )
        self.fabric = Fabric.of(topology)
        self.node_of = topology.node_of()
        self.time_per_token_s = float(topology.time_per_token_s)
        self._bg = (self.tok // self.n) * self.g  # [T] first (batch, gpu) key of each token's batch
        self._salt: np.ndarray | None = None  # [T, G] majority tie-break, made on first use

    def destinations(
        self, layer: Layer, ex: np.ndarray, src: np.ndarray, tok: np.ndarray | None = None
    ) -> np.ndarray:
        """int64 ``[k, t]``: the GPU that processes each copy ``ex [k, t]`` under ``layer``'s placement, for
        tokens ``tok [t]`` (default: all) positioned at ``src [t]``."""
        tok = self.tok if tok is None else tok
        cand, count = even_candidates(layer_holders(layer, self.num_experts))
        if cand.shape[1] == 1:  # no replicas: every rule gives the one holder
            return cand[:, 0][ex]
        if self.options.replica_choice == "even":
            return cand.reshape(-1)[ex * cand.shape[1] + tok % count[ex]]
        routes = route_table(Placement([layer], num_experts=self.num_experts), self.node_of, "local")
        return routes.choice[0][src, ex, tok % routes.count[0][src, ex]]

    def next_positions(self, dest: np.ndarray, src: np.ndarray, tok: np.ndarray | None = None) -> np.ndarray:
        """int64 ``[t]``: where tokens ``tok`` (default: all) are after the layer (``moe.cost_model
        .next_positions``'s rules; the majority GPU from per-token copy counts, ties to the largest
        ``token_hash(token * G + gpu)``)."""
        if self.options.token_movement == "home":
            return src
        if self.slot_order == "score":
            return dest[0]
        if self._salt is None:
            keys = self.tok[:, None] * self.g + np.arange(self.g)[None, :]
            self._salt = token_hash(keys) >> np.uint64(8)  # < 2**56: counts go above
        salt = self._salt if tok is None else self._salt[tok]
        rows = np.arange(salt.shape[0], dtype=np.int64)
        cnt = np.bincount((rows * self.g + dest).ravel(), minlength=rows.size * self.g)
        score = (cnt.reshape(-1, self.g).astype(np.uint64) << np.uint64(56)) | salt
        return np.argmax(score, axis=1)

    def tail(self, load: np.ndarray, d_cnt: np.ndarray, c_cnt: np.ndarray) -> float:
        """Seconds summed over batches of one layer from its int64 counts: copies per GPU ``load [nb, G]``
        and tokens per (batch, from, to) at dispatch and combine ``d_cnt``, ``c_cnt [nb, G, G]``."""
        disp = self.fabric.transfer_times(d_cnt).max(axis=(1, 2))
        comb = self.fabric.transfer_times(c_cnt).max(axis=(1, 2))
        tok_tail = (load * self.time_per_token_s).max(axis=1)
        return float((disp + tok_tail + comb).sum())

    def _dispatch_keys(
        self, tok: np.ndarray, src: np.ndarray, dest: np.ndarray, first: np.ndarray
    ) -> np.ndarray:
        """(batch, from, to) key of every sent copy of tokens ``tok`` (int64 ``[t]``, entering at ``src [t]``;
        ``dest``, ``first`` ``[k, t]``)."""
        return ((self._bg[tok] + src) * self.g + dest)[first]

    def _keys(
        self, tok: np.ndarray, src: np.ndarray, dest: np.ndarray, first: np.ndarray, nxt: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(dispatch keys, combine keys, load keys) of tokens ``tok`` (int64 ``[t]``; ``dest``, ``first``
        ``[k, t]``): (batch, from, to) of every sent copy, (batch, GPU) of every copy."""
        bg = self._bg[tok]
        kd = self._dispatch_keys(tok, src, dest, first)
        return kd, ((bg + dest) * self.g + nxt)[first], (bg + dest).ravel()

    def replay(self, li: int, layer: Layer, src: np.ndarray) -> LayerReplay:
        """Layer ``li`` with ``layer``'s placement from positions ``src [T]``: everything its time is made of."""
        nb, g = self.nb, self.g
        dest = self.destinations(layer, self.by_layer[li], src)
        first = _first_copies(dest, self.options.dedupe_dispatch)
        nxt = self.next_positions(dest, src)
        kd, kc, kl = self._keys(self.tok, src, dest, first, nxt)
        load = np.bincount(kl, minlength=nb * g).reshape(nb, g)
        d_cnt = np.bincount(kd, minlength=nb * g * g).reshape(nb, g, g)
        c_cnt = np.bincount(kc, minlength=nb * g * g).reshape(nb, g, g)
        return LayerReplay(dest, first, nxt, load, d_cnt, c_cnt, self.tail(load, d_cnt, c_cnt))

    def time(self, li: int, layer: Layer, src: np.ndarray) -> tuple[float, np.ndarray]:
        """(seconds summed over batches, positions ``[T]`` after layer ``li``)."""
        rep = self.replay(li, layer, src)
        return rep.time, rep.nxt

    def replays(self, assignment: list[Layer]) -> list[LayerReplay]:
        """Every layer's replay (``replay``), each from the positions the one before leaves (the first from the
        start layout)."""
        out: list[LayerReplay] = []
        for li, layer in enumerate(assignment):
            out.append(self.replay(li, layer, out[-1].nxt if out else self.start))
        return out

    def forward(
        self, assignment: list[Layer], first: int = 0, src: np.ndarray | None = None
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Times of layers ``first, first + 1, ...`` (one per entry of ``assignment``) from positions ``src``
        (default: the start layout) and the positions entering each of them and after the last."""
        pos = [self.start if src is None else src]
        times = np.zeros(len(assignment))
        for i, layer in enumerate(assignment):
            times[i], nxt = self.time(first + i, layer, pos[-1])
            pos.append(nxt)
        return times, pos

    def moved(self, li: int, rep: LayerReplay, old: Layer, new: Layer, src: np.ndarray) -> Move:
        """Layer ``li`` replayed with ``new`` instead of ``old`` (``rep``: its replay with ``old`` from ``src``)
        on the tokens with a copy of an expert whose holders changed only; needs ``positions_are_local``.
        Same counts, so the same time bit for bit, as ``replay(li, new, src)``."""
        changed = (layer_holders(old, self.num_experts) != layer_holders(new, self.num_experts)).any(axis=0)
        tok = np.flatnonzero(changed[self.by_layer[li]].any(axis=0))
        ex, s = self.by_layer[li][:, tok], src[tok]
        dest = self.destinations(new, ex, s, tok)
        first = _first_copies(dest, self.options.dedupe_dispatch)
        nxt = self.next_positions(dest, s, tok)
        before = self._keys(tok, s, rep.dest[:, tok], rep.first[:, tok], rep.nxt[tok])
        after = self._keys(tok, s, dest, first, nxt)
        d_cnt, c_cnt, load = (
            _recount(c, b, a) for c, b, a in zip((rep.d_cnt, rep.c_cnt, rep.load), before, after, strict=True)
        )
        return Move(tok, LayerReplay(dest, first, nxt, load, d_cnt, c_cnt, self.tail(load, d_cnt, c_cnt)))

    def shifted(
        self, li: int, rep: LayerReplay, tok: np.ndarray, old: np.ndarray, new: np.ndarray
    ) -> LayerReplay:
        """Layer ``li``'s replay ``rep`` with tokens ``tok`` entering at ``new`` instead of ``old`` (int64
        ``[t]``); needs ``positions_are_local`` (the copies' GPUs do not depend on where a token enters)."""
        dest, first = rep.dest[:, tok], rep.first[:, tok]
        before, after = (self._dispatch_keys(tok, src, dest, first) for src in (old, new))
        d_cnt = _recount(rep.d_cnt, before, after)
        return dataclasses.replace(rep, d_cnt=d_cnt, time=self.tail(rep.load, d_cnt, rep.c_cnt))

    @property
    def positions_are_local(self) -> bool:
        """True when a layer's change moves tokens only for the next layer (``even`` replicas or ``home``)."""
        return self.options.replica_choice == "even" or self.options.token_movement == "home"


def full_replay_time(model: LayerModel, li: int, layer: Layer, src: np.ndarray) -> tuple[float, np.ndarray]:
    """``model.time(li, layer, src)`` through ``evaluate_placement``'s own replay of one layer (a validated
    ``Placement``, its route table, every per-batch statistic): the reference that the tests and
    ``benchmarks.layer_model`` compare ``LayerModel.time`` with, bit for bit and for speed."""
    rp = _Replay(
        routes=route_table(Placement([layer], num_experts=model.num_experts), model.node_of,
                           model.options.replica_choice),
        fabric=Fabric.of(model.topology), options=model.options, slot_order=model.slot_order,
        time_per_token_s=float(model.topology.time_per_token_s), n=model.n, nb=model.nb, g=model.g,
    )  # fmt: skip
    out = _replay_layer(rp, 0, model.by_layer[li], src, model.tok)
    return float((out["disp_tail"] + out["tok_tail"] + out["comb_tail"]).sum()), out["nxt"]
