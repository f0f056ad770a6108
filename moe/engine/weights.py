"""Random weights of the right shapes, the same on every rank: each tensor has its own seed.

An expert's weights depend only on ``(seed, layer, expert)``, so a rank makes the experts it holds (and a
replica is bit-identical to its original) without making the others. Tensors are drawn in float32 on the CPU
(``torch.Generator``), scaled by ``1 / sqrt(fan_in)``, then cast and moved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from common.seeding import derive_seed
from moe.engine.spec import MoEModelSpec


def _draw(seed: int, shape: tuple[int, ...], *keys: int | str) -> torch.Tensor:
    """float32 ``shape`` ~ N(0, 1 / fan_in), fan_in = ``shape[-1]``, from ``derive_seed(seed, *keys)``."""
    gen = torch.Generator().manual_seed(derive_seed(seed, *keys))
    return torch.randn(shape, generator=gen, dtype=torch.float32) / math.sqrt(shape[-1])


@dataclass
class ExpertWeights:
    """One SwiGLU expert: ``down @ (silu(gate @ x) * (up @ x))``; gate, up ``[F, H]``, down ``[H, F]``."""

    gate: torch.Tensor
    up: torch.Tensor
    down: torch.Tensor

    def to(self, device: torch.device, dtype: torch.dtype) -> ExpertWeights:
        return ExpertWeights(*(t.to(device=device, dtype=dtype) for t in (self.gate, self.up, self.down)))


@dataclass
class DenseWeights:
    """The replicated part of one block: norms ``[H]``, attention ``[H, H]`` x 4, router ``[E, H]``, shared experts."""

    attn_norm: torch.Tensor
    wq: torch.Tensor
    wk: torch.Tensor
    wv: torch.Tensor
    wo: torch.Tensor
    ffn_norm: torch.Tensor
    router: torch.Tensor
    shared: list[ExpertWeights]

    def to(self, device: torch.device, dtype: torch.dtype) -> DenseWeights:
        def mv(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=device, dtype=dtype)

        return DenseWeights(
            attn_norm=mv(self.attn_norm),
            wq=mv(self.wq),
            wk=mv(self.wk),
            wv=mv(self.wv),
            wo=mv(self.wo),
            ffn_norm=mv(self.ffn_norm),
            router=mv(self.router),
            shared=[s.to(device, dtype) for s in self.shared],
        )


def expert_weights(
    seed: int, layer: int, expert: int, hidden: int, ffn: int, kind: str = "expert"
) -> ExpertWeights:
    """The weights of routed (``kind='expert'``) or shared (``kind='shared'``) expert ``expert`` of ``layer``."""
    return ExpertWeights(
        gate=_draw(seed, (ffn, hidden), kind, layer, expert, "gate"),
        up=_draw(seed, (ffn, hidden), kind, layer, expert, "up"),
        down=_draw(seed, (hidden, ffn), kind, layer, expert, "down"),
    )


def dense_weights(seed: int, layer: int, spec: MoEModelSpec) -> DenseWeights:
    """The replicated weights of block ``layer``."""
    h = spec.hidden_size
    return DenseWeights(
        attn_norm=torch.ones(h),
        wq=_draw(seed, (h, h), "attn", layer, "q"),
        wk=_draw(seed, (h, h), "attn", layer, "k"),
        wv=_draw(seed, (h, h), "attn", layer, "v"),
        wo=_draw(seed, (h, h), "attn", layer, "o"),
        ffn_norm=torch.ones(h),
        router=_draw(seed, (spec.num_experts, h), "router", layer),
        shared=[
            expert_weights(seed, layer, s, h, spec.shared_ffn, kind="shared")
            for s in range(spec.num_shared_experts)
        ],
    )


def input_hidden(seed: int, batch: int, rows: slice, hidden: int) -> torch.Tensor:
    """float32 ``[rows, H]`` input hidden states of batch ``batch`` (rows of the whole batch), N(0, 1).

    The whole batch's rows are drawn and sliced, so every rank sees its part of the same batch.
    """
    gen = torch.Generator().manual_seed(derive_seed(seed, "input", batch))
    stop = rows.stop
    return torch.randn((stop, hidden), generator=gen, dtype=torch.float32)[rows]
