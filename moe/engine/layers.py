"""The block's pieces as functions of tensors: RMSNorm, causal attention, a SwiGLU expert, the top-k router.

Shapes: ``x`` is ``[tokens, H]``; attention sees ``tokens`` as ``tokens / seq_len`` sequences of ``seq_len``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812 - torch's convention

from moe.engine.weights import DenseWeights, ExpertWeights


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``x / rms(x) * weight`` over the last dim; computed in float32, returned in ``x``'s dtype."""
    xf = x.float()
    out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (out * weight.float()).to(x.dtype)


def attention(x: torch.Tensor, w: DenseWeights, num_heads: int, seq_len: int) -> torch.Tensor:
    """Causal multi-head self-attention of ``x [T, H]`` in sequences of ``seq_len`` tokens; returns ``[T, H]``."""
    t, h = x.shape
    d = h // num_heads

    def heads(m: torch.Tensor) -> torch.Tensor:
        return (x @ m.T).view(t // seq_len, seq_len, num_heads, d).transpose(1, 2)

    out = F.scaled_dot_product_attention(heads(w.wq), heads(w.wk), heads(w.wv), is_causal=True)
    return out.transpose(1, 2).reshape(t, h) @ w.wo.T


def swiglu(x: torch.Tensor, w: ExpertWeights) -> torch.Tensor:
    """One expert on ``x [n, H]``: ``(silu(x gate^T) * (x up^T)) down^T``, ``[n, H]``."""
    return (F.silu(x @ w.gate.T) * (x @ w.up.T)) @ w.down.T


def route(
    x: torch.Tensor, router: torch.Tensor, top_k: int, renormalize: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of the softmax over ``x router^T``: (ids int64 ``[T, k]`` highest first, weights float32 ``[T, k]``)."""
    probs = torch.softmax((x @ router.T).float(), dim=-1)
    w, ids = torch.topk(probs, top_k, dim=-1)
    if renormalize:
        w = w / w.sum(-1, keepdim=True)
    return ids, w


def shared_experts(x: torch.Tensor, shared: list[ExpertWeights]) -> torch.Tensor:
    """Sum of the shared experts on ``x [T, H]`` (zeros when there are none)."""
    out = torch.zeros_like(x)
    for w in shared:
        out = out + swiglu(x, w)
    return out
