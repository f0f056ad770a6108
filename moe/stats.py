"""Routing statistics from a trace, vectorised (``bincount``), never a Python loop over tokens."""

from __future__ import annotations

import numpy as np


def expert_load(experts: np.ndarray, num_experts: int) -> np.ndarray:
    """Token copies routed to each expert of each layer.

    Args:
        experts: integer ``[tokens, layers, top_k]``.
        num_experts: E.

    Returns:
        ``P`` int64 ``[layers, E]``; every row sums to ``tokens * top_k``.
    """
    t, num_layers, k = experts.shape
    offs = (np.arange(num_layers, dtype=np.int64) * num_experts)[None, :, None]
    flat = (experts.astype(np.int64) + offs).ravel()
    return np.bincount(flat, minlength=num_layers * num_experts).reshape(num_layers, num_experts)


def cross_layer_counts(experts: np.ndarray, num_experts: int) -> np.ndarray:
    """Co-occurrence of a token's choices in consecutive layers.

    Every token contributes all ``top_k x top_k`` pairs (e1 in layer l, e2 in layer l+1), each with count 1;
    divide by ``top_k`` for token units (then every row-sum over e2 equals ``P[l, e1]``).

    Args:
        experts: integer ``[tokens, layers, top_k]``.
        num_experts: E.

    Returns:
        ``R`` int64 ``[layers - 1, E, E]``; each slice sums to ``tokens * top_k**2``.
    """
    t, num_layers, k = experts.shape
    e = num_experts
    if num_layers < 2:
        return np.zeros((0, e, e), dtype=np.int64)
    ex = experts.astype(np.int64)
    a = ex[:, :-1, :, None]  # [t, L-1, k, 1]
    b = ex[:, 1:, None, :]  # [t, L-1, 1, k]
    layer = (np.arange(num_layers - 1, dtype=np.int64) * e * e)[None, :, None, None]
    flat = (layer + a * e + b).ravel()
    return np.bincount(flat, minlength=(num_layers - 1) * e * e).reshape(num_layers - 1, e, e)
