"""A rank's routed experts on the copies it received, as one grouped GEMM (``engine.experts``).

Copies arrive sorted by local expert (``moe.engine.dispatch.received_copies``) with the tokens per expert on
the host (from the count exchange). Kernels, all ``out[row] += w * E_slot(h[row])`` summed per received row:

- ``grouped_mm``: ``torch._grouped_mm`` twice (gate and up fused as one ``[S, H, 2F]`` operand, then down
  ``[S, F, H]``), one call per GEMM for all experts; where the device, dtype or strides do not support it
  (probed once per layer), ``auto`` falls back to
- ``bmm``: the groups padded to the largest one (rounded up to ``PAD_ROWS``), ``[S, max, H]``, and two
  batched matmuls;
- ``loop``: one SwiGLU per expert in a Python loop over the host offsets: the reference.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F  # noqa: N812 - torch's convention

from moe.engine.layers import swiglu
from moe.engine.weights import ExpertWeights

KERNELS = ("auto", "grouped_mm", "bmm", "loop")
PAD_ROWS = 16  # bmm pads groups to a multiple of 16 rows (GEMM tiles)


class StackedExperts:
    """One layer's local experts stacked: ``w13 [S, H, 2F]`` (gate | up) and ``w2 [S, F, H]``.

    Both are transposed views of contiguous ``[S, 2F, H]`` / ``[S, H, F]`` tensors (the layout
    ``torch._grouped_mm`` wants for its second operand).
    """

    def __init__(self, experts: list[ExpertWeights], kernel: str) -> None:
        self.experts = experts
        self.count = len(experts)
        self.ffn = experts[0].gate.shape[0] if experts else 0
        if experts:
            w13 = torch.stack([torch.cat([e.gate, e.up], 0) for e in experts])  # [S, 2F, H]
            w2 = torch.stack([e.down for e in experts])  # [S, H, F]
            f = self.ffn  # the per-expert weights become views of the stacks: no second copy in memory
            self.experts = [ExpertWeights(w13[s, :f], w13[s, f:], w2[s]) for s in range(self.count)]
            experts[:] = self.experts
            self.w13, self.w2 = w13.transpose(1, 2), w2.transpose(1, 2)
        self.kernel = resolve_kernel(self, kernel)

    def forward(
        self, h: torch.Tensor, rows: torch.Tensor, slots: torch.Tensor, w: torch.Tensor, per_slot: list[int]
    ) -> torch.Tensor:
        """Partial outputs ``[m, H]`` of the received rows ``h [m, H]`` (copies sorted by slot)."""
        out = torch.zeros_like(h)
        if rows.numel() == 0:
            return out
        x = h[rows]
        if self.kernel == "grouped_mm":
            y = _grouped(x, self, per_slot)
        elif self.kernel == "bmm":
            y = _padded_bmm(x, slots, self, per_slot)
        else:
            y = _loop(x, self.experts, per_slot)
        return out.index_add_(0, rows, y * w[:, None].to(h.dtype))


def _offsets(per_slot: list[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(list(itertools.accumulate(per_slot)), dtype=torch.int32).to(device, non_blocking=True)


def _grouped(x: torch.Tensor, st: StackedExperts, per_slot: list[int]) -> torch.Tensor:
    offs = _offsets(per_slot, x.device)
    gu = torch._grouped_mm(x, st.w13, offs=offs)  # noqa: SLF001 - torch's grouped GEMM
    a = (F.silu(gu[:, : st.ffn]) * gu[:, st.ffn :]).contiguous()
    return torch._grouped_mm(a, st.w2, offs=offs)  # noqa: SLF001


def _padded_bmm(
    x: torch.Tensor, slots: torch.Tensor, st: StackedExperts, per_slot: list[int]
) -> torch.Tensor:
    width = max(per_slot)
    start = torch.tensor([0, *per_slot[:-1]], dtype=torch.int64).cumsum(0).to(x.device, non_blocking=True)
    slots = slots.long()  # received_copies gives int32 slots
    pos = torch.arange(x.shape[0], device=x.device) - start[slots]
    pad = x.new_zeros((st.count, width, x.shape[1]))
    pad[slots, pos] = x
    gu = torch.bmm(pad, st.w13)
    a = F.silu(gu[..., : st.ffn]) * gu[..., st.ffn :]
    return torch.bmm(a, st.w2)[slots, pos]


def _loop(x: torch.Tensor, experts: list[ExpertWeights], per_slot: list[int]) -> torch.Tensor:
    parts, start = [], 0
    for weights, c in zip(experts, per_slot, strict=True):
        if c:
            parts.append(swiglu(x[start : start + c], weights))
        start += c
    return torch.cat(parts) if parts else x.new_zeros((0, x.shape[1]))


def grouped_mm_works(st: StackedExperts) -> bool:
    """True when ``torch._grouped_mm`` runs on these operands (device, dtype, strides) and matches ``bmm``."""
    if not st.count or not hasattr(torch, "_grouped_mm"):
        return False
    per = [1] * st.count
    x = torch.ones((st.count, st.w13.shape[1]), dtype=st.w13.dtype, device=st.w13.device)
    try:
        got = _grouped(x, st, per)
    except (RuntimeError, NotImplementedError, TypeError):
        return False
    ref = _loop(x, st.experts, per)
    return bool(torch.allclose(got.float(), ref.float(), rtol=2e-2, atol=2e-2))


def resolve_kernel(st: StackedExperts, kernel: str) -> str:
    """The kernel to use: ``auto`` -> ``grouped_mm`` when it works here, else ``bmm``."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown expert kernel {kernel!r}")
    if kernel == "auto":
        return "grouped_mm" if grouped_mm_works(st) else "bmm"
    return kernel
