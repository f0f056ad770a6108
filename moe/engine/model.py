"""The MoE block stack, expert-parallel (``ExpertParallelModel``) and as a single-process reference.

A block: ``h = x + attn(rmsnorm(x))``; ``y = h + moe(rmsnorm(h)) + shared(rmsnorm(h))``. Attention, norms,
router and shared experts are replicated on every rank (data parallel over the rank's own tokens); the routed
experts live on the ranks the placement names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from moe.engine.comm import PhaseClock
from moe.engine.dispatch import DeviceRoutes, HostBuffer
from moe.engine.experts import StackedExperts
from moe.engine.layers import attention, rms_norm, route, shared_experts, swiglu
from moe.engine.moe_layer import (
    LayerRuntime,
    SideStream,
    ep_moe,
    ep_moe_legacy,
    ep_moe_split,
    ep_moe_two_batch,
)
from moe.engine.routing import layer_routes
from moe.engine.spec import MoEModelSpec
from moe.engine.weights import DenseWeights, ExpertWeights, dense_weights, expert_weights
from moe.placement.base import Placement

# (layer, normalised hidden [n, H], ids [n, k], weights [n, k]) -> MoE output [n, H]
MoEFn = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Batch:
    """This rank's part of one batch.

    Attributes:
        x: float32 ``[n, H]`` input hidden states (CPU).
        gtok: int64 ``[n]`` global token index of each row (replica choice).
        routing: trace replay: per layer (ids int64 ``[n, k]``, weights float32 ``[n, k]``); ``None``: router.
    """

    x: torch.Tensor
    gtok: torch.Tensor
    routing: list[tuple[torch.Tensor, torch.Tensor]] | None = None


def run_blocks(
    x: torch.Tensor,
    spec: MoEModelSpec,
    dense: list[DenseWeights],
    seq_len: int,
    routing: list[tuple[torch.Tensor, torch.Tensor]] | None,
    moe: MoEFn,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """All blocks on ``x [n, H]``; returns the output ``[n, H]`` and the ids ``[n, k]`` each layer used (on
    the device the routing is on: no host round trip per layer)."""
    used = []
    for li, w in enumerate(dense):
        h = x + attention(rms_norm(x, w.attn_norm, spec.rms_eps), w, spec.num_heads, seq_len)
        hn = rms_norm(h, w.ffn_norm, spec.rms_eps)
        if routing is None:
            ids, gw = route(hn, w.router, spec.top_k, spec.renormalize)
        else:
            ids, gw = routing[li]
        used.append(ids)
        x = h + moe(li, hn, ids, gw) + shared_experts(hn, w.shared)
    return x, used


@dataclass
class ForwardResult:
    """One forward on one rank: output ``[n, H]``, clock indices ``[L][3]``, rows sent ``[L, G]``, ids used."""

    out: torch.Tensor
    phases: list[tuple[int, int, int]]
    sent: np.ndarray
    ids: list[torch.Tensor]


class ExpertParallelModel:
    """This rank's share of the model: replicated dense weights and the experts the placement gives it."""

    def __init__(
        self,
        spec: MoEModelSpec,
        placement: Placement,
        rank: int,
        seed: int,
        device: torch.device,
        dtype: torch.dtype,
        seq_len: int,
        replica_choice: str,
        node_of: np.ndarray,
        path: str = "fast",
        kernel: str = "auto",
        overlap: str = "none",
    ) -> None:
        self.spec, self.rank, self.seq_len = spec, rank, seq_len
        self.device, self.dtype = device, dtype
        self.path, self.overlap = path, overlap
        layers = range(spec.num_layers)
        self.dense = [dense_weights(seed, li, spec).to(device, dtype) for li in layers]
        self.experts: list[list[ExpertWeights]] = [
            [
                expert_weights(seed, li, e, spec.hidden_size, spec.ffn_size).to(device, dtype)
                for e in placement.assignment[li][rank]
            ]
            for li in layers
        ]
        self.routes = layer_routes(placement, node_of, replica_choice)
        self.runtime = [
            LayerRuntime(
                DeviceRoutes.of(r, device),
                StackedExperts(ex, kernel),
                HostBuffer(device),
                spec.top_k,
                padded=path == "padded",
            )
            for r, ex in zip(self.routes, self.experts, strict=True)
        ]
        self.side = SideStream(device) if overlap == "two_batch" else None

    @property
    def kernel(self) -> str:
        """The expert kernel in use (``loop`` on the legacy path; the fast path's may differ per layer)."""
        if self.path == "legacy":
            return "loop"
        return ",".join(sorted({rt.experts.kernel for rt in self.runtime if rt.experts.count})) or "none"

    def _layer(self, li: int, hn: torch.Tensor, ids: torch.Tensor, gw: torch.Tensor, gtok: torch.Tensor,
               clock: PhaseClock) -> tuple[torch.Tensor, tuple[int, int, int], torch.Tensor]:  # fmt: skip
        if self.path == "legacy":
            return ep_moe_legacy(hn, ids, gw, gtok, self.rank, self.routes[li], self.experts[li], clock)
        if self.overlap == "split":
            return ep_moe_split(hn, ids, gw, gtok, self.rank, self.runtime[li], clock)
        if self.side is not None:
            return ep_moe_two_batch(hn, ids, gw, gtok, self.rank, self.runtime[li], clock, self.side)
        return ep_moe(hn, ids, gw, gtok, self.rank, self.runtime[li], clock)

    @torch.no_grad()
    def forward(self, batch: Batch, clock: PhaseClock) -> ForwardResult:
        phases: list[tuple[int, int, int]] = []
        sent: list[torch.Tensor] = []

        gtok = batch.gtok.to(self.device)

        def moe(li: int, hn: torch.Tensor, ids: torch.Tensor, gw: torch.Tensor) -> torch.Tensor:
            out, ph, rows = self._layer(li, hn, ids, gw, gtok, clock)
            phases.append(ph)
            sent.append(rows)
            return out

        x = batch.x.to(self.device, self.dtype)
        out, ids = run_blocks(x, self.spec, self.dense, self.seq_len, _on(batch.routing, self.device), moe)
        return ForwardResult(out=out, phases=phases, sent=torch.stack(sent).numpy(), ids=ids)


def _on(routing: list[tuple[torch.Tensor, torch.Tensor]] | None, device: torch.device):  # noqa: ANN202
    if routing is None:
        return None
    return [(ids.to(device), w.to(device)) for ids, w in routing]


@torch.no_grad()
def reference_forward(
    spec: MoEModelSpec,
    dense: list[DenseWeights],
    seed: int,
    batch: Batch,
    seq_len: int,
    device: torch.device,
    dtype: torch.dtype,
    cache: dict[tuple[int, int], ExpertWeights] | None = None,
) -> torch.Tensor:
    """The same blocks in one process with every expert (made from the seed when first needed).

    ``cache`` keeps the experts made (pass a dict for small models; ``None`` makes each again per batch and
    holds one expert at a time).
    """

    def expert(li: int, e: int) -> ExpertWeights:
        if cache is not None and (li, e) in cache:
            return cache[(li, e)]
        w = expert_weights(seed, li, e, spec.hidden_size, spec.ffn_size).to(device, dtype)
        if cache is not None:
            cache[(li, e)] = w
        return w

    def moe(li: int, hn: torch.Tensor, ids: torch.Tensor, gw: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(hn)
        ids_d, gw_d = ids.to(hn.device), gw.to(hn.device)
        for e in torch.unique(ids).tolist():
            rows, cols = (ids_d == e).nonzero(as_tuple=True)
            out.index_add_(0, rows, swiglu(hn[rows], expert(li, e)) * gw_d[rows, cols, None].to(hn.dtype))
        return out

    x = batch.x.to(device, dtype)
    out, _ = run_blocks(x, spec, dense, seq_len, _on(batch.routing, device), moe)
    return out
