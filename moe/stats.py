"""Routing statistics from a trace, vectorised (``bincount`` / matrix products), never a Python loop over tokens.

Counting conventions (used by the whole suite):

- ``P[l, e]`` (``expert_load``): token copies routed to expert e in layer l; every row sums to
  ``tokens * top_k``.
- ``R[l, e1, e2]`` (``cross_layer_counts``): every token contributes all ``top_k x top_k`` pairs (e1 among its
  choices in layer l, e2 among its choices in layer l+1), each with count 1; each slice sums to
  ``tokens * top_k**2``. Divide by ``top_k`` for token units: then ``R[l].sum(1) / top_k == P[l]`` and
  ``R[l].sum(0) / top_k == P[l + 1]``.
- Affinity score of a layer boundary (``affinity_scores``): the share of the next layer's routing entropy
  that the previous layer's choice explains, ``I(e_l; e_l+1) / H(e_l+1)`` over the pair distribution
  ``R[l] / R[l].sum()``. 0 means next-layer choices follow popularity alone (independent of the previous
  choice); 1 means the previous choice determines the next one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

_CHUNK = 1 << 22  # tokens per block: bounds memory and keeps float32 sums exact (< 2**24 per cell)


def _check_shape(experts: np.ndarray) -> tuple[int, int, int]:
    if experts.ndim != 3:
        raise ValueError(f"experts must be [tokens, layers, top_k], got shape {experts.shape}")
    t, num_layers, k = experts.shape
    return int(t), int(num_layers), int(k)


def expert_load(experts: np.ndarray, num_experts: int) -> np.ndarray:
    """Token copies routed to each expert of each layer.

    Args:
        experts: integer ``[tokens, layers, top_k]``.
        num_experts: E.

    Returns:
        ``P`` int64 ``[layers, E]``; every row sums to ``tokens * top_k``.
    """
    _, num_layers, _ = _check_shape(experts)
    out = np.empty((num_layers, num_experts), dtype=np.int64)
    for layer in range(num_layers):  # one bincount per layer: no [tokens, layers, k] int64 copy
        out[layer] = np.bincount(experts[:, layer, :].ravel(), minlength=num_experts)
    return out


def _multi_hot(ids: np.ndarray, num_experts: int) -> np.ndarray:
    """float32 ``[tokens, E]`` with 1 where a token chose the expert (``ids``: int ``[tokens, top_k]``)."""
    t = ids.shape[0]
    hot = np.zeros((t, num_experts), dtype=np.float32)
    flat = (np.arange(t, dtype=np.intp) * num_experts)[:, None] + ids
    hot.reshape(-1)[flat.ravel()] = 1.0
    return hot


def _cross_matmul(experts: np.ndarray, num_experts: int) -> np.ndarray:
    t, num_layers, _ = experts.shape
    out = np.zeros((num_layers - 1, num_experts, num_experts), dtype=np.int64)
    for start in range(0, t, _CHUNK):
        block = experts[start : start + _CHUNK]
        prev = _multi_hot(block[:, 0, :], num_experts)
        for layer in range(num_layers - 1):
            nxt = _multi_hot(block[:, layer + 1, :], num_experts)
            out[layer] += np.rint(prev.T @ nxt).astype(np.int64)
            prev = nxt
    return out


def _cross_bincount(experts: np.ndarray, num_experts: int) -> np.ndarray:
    _, num_layers, _ = experts.shape
    e2 = num_experts * num_experts
    out = np.empty((num_layers - 1, e2), dtype=np.int64)
    prev = experts[:, 0, :].astype(np.intp) * num_experts
    for layer in range(num_layers - 1):
        nxt = experts[:, layer + 1, :].astype(np.intp)
        out[layer] = np.bincount((prev[:, :, None] + nxt[:, None, :]).ravel(), minlength=e2)
        prev = nxt * num_experts
    return out.reshape(num_layers - 1, num_experts, num_experts)


def cross_layer_counts(experts: np.ndarray, num_experts: int, method: str = "bincount") -> np.ndarray:
    """Co-occurrence of a token's choices in consecutive layers.

    Every token contributes all ``top_k x top_k`` pairs (e1 in layer l, e2 in layer l+1), each with count 1;
    divide by ``top_k`` for token units (then every row-sum over e2 equals ``P[l, e1]``).

    Args:
        experts: integer ``[tokens, layers, top_k]``.
        num_experts: E.
        method: ``bincount`` (default: pair codes ``e1 * E + e2``, cost ~ tokens * top_k**2 per layer) or
            ``matmul`` (multi-hot ``[tokens, E]`` float32 products, exact, cost ~ tokens * E**2; up to 1.5x
            faster for E <= 64 on an idle multi-core CPU, but much slower when BLAS threads compete for
            cores). Both give identical counts.

    Returns:
        ``R`` int64 ``[layers - 1, E, E]``; each slice sums to ``tokens * top_k**2``.
    """
    _, num_layers, _ = _check_shape(experts)
    e = int(num_experts)
    if num_layers < 2:
        return np.zeros((0, e, e), dtype=np.int64)
    if method == "matmul":
        return _cross_matmul(experts, e)
    if method == "bincount":
        return _cross_bincount(experts, e)
    raise ValueError(f"cross_layer_counts: method must be 'bincount' or 'matmul', got {method!r}")


def next_layer_distribution(cross: np.ndarray) -> np.ndarray:
    """Conditional next-layer choice distributions ``Q[l, e1, e2] = R[l, e1, e2] / sum_e2 R[l, e1, e2]``.

    Args:
        cross: ``R`` ``[layers - 1, E, E]`` from ``cross_layer_counts``.

    Returns:
        float64 ``[layers - 1, E, E]``: row e1 of slice l is the distribution of a token's layer-(l+1)
        choices given that it chose e1 in layer l; all-zero rows for experts that got no tokens.
    """
    r = cross.astype(np.float64)
    rows = r.sum(axis=2, keepdims=True)
    return np.divide(r, rows, out=np.zeros_like(r), where=rows > 0)


def load_imbalance(load: np.ndarray) -> np.ndarray:
    """Max over mean expert load per layer (1.0 is perfectly balanced).

    Args:
        load: ``P`` ``[layers, E]``.

    Returns:
        float64 ``[layers]``.
    """
    p = load.astype(np.float64)
    mean = p.mean(axis=1)
    return np.divide(p.max(axis=1), mean, out=np.ones_like(mean), where=mean > 0)


def load_cv(load: np.ndarray) -> np.ndarray:
    """Coefficient of variation (std / mean) of the expert load per layer, float64 ``[layers]``."""
    p = load.astype(np.float64)
    mean = p.mean(axis=1)
    return np.divide(p.std(axis=1), mean, out=np.zeros_like(mean), where=mean > 0)


def _entropy(p: np.ndarray, axis: int) -> np.ndarray:
    """Shannon entropy in nats along ``axis`` of probabilities ``p`` (0 log 0 = 0)."""
    logp = np.log(p, out=np.zeros_like(p), where=p > 0)
    return -(p * logp).sum(axis=axis)


def affinity_scores(cross: np.ndarray) -> np.ndarray:
    """Normalised mutual information of consecutive choices, per layer boundary.

    ``score[l] = I(e_l; e_l+1) / H(e_l+1) = 1 - H(e_l+1 | e_l) / H(e_l+1)`` over the pair distribution
    ``J = R[l] / R[l].sum()``. 0: next-layer choices are as spread as popularity alone predicts; 1: the
    previous choice fixes the next one. Finite samples bias it upward by about ``(E-1)**2 / (2 n H)`` for
    ``n`` pairs (negligible for real traces: < 1e-3 at 64 experts and 10**5 tokens).

    Args:
        cross: ``R`` ``[layers - 1, E, E]``.

    Returns:
        float64 ``[layers - 1]`` in ``[0, 1]`` (0 where the next layer has zero entropy).
    """
    r = cross.astype(np.float64)
    total = r.sum(axis=(1, 2), keepdims=True)
    joint = np.divide(r, total, out=np.zeros_like(r), where=total > 0)
    h_next = _entropy(joint.sum(axis=1), axis=1)  # [L-1]
    h_joint = _entropy(joint.reshape(len(joint), -1), axis=1)
    h_prev = _entropy(joint.sum(axis=2), axis=1)
    mutual = h_prev + h_next - h_joint
    score = np.divide(mutual, h_next, out=np.zeros_like(h_next), where=h_next > 1e-12)
    return np.clip(score, 0.0, 1.0)


def affinity_lift(cross: np.ndarray) -> np.ndarray:
    """How much more often e2 follows e1 than popularity alone predicts: ``Q[l,e1,e2] / p_l+1[e2]``.

    Returns:
        float64 ``[layers - 1, E, E]``; 1 means independence, 0 where e1 got no tokens or e2 none.
    """
    q = next_layer_distribution(cross)
    col = cross.sum(axis=1).astype(np.float64)
    marg = col / np.maximum(col.sum(axis=1, keepdims=True), 1.0)
    return np.divide(q, marg[:, None, :], out=np.zeros_like(q), where=marg[:, None, :] > 0)


def load_distance(load_a: np.ndarray, load_b: np.ndarray) -> np.ndarray:
    """Total variation distance between two traces' normalised expert loads, per layer.

    Args:
        load_a, load_b: ``P`` ``[layers, E]`` of two traces of the same model.

    Returns:
        float64 ``[layers]`` in ``[0, 1]``: ``0.5 * sum_e |a[l,e] - b[l,e]|`` after normalising each row.
    """
    if load_a.shape != load_b.shape:
        raise ValueError(f"load_distance: shapes differ: {load_a.shape} vs {load_b.shape}")
    a = load_a / np.maximum(load_a.sum(axis=1, keepdims=True), 1)
    b = load_b / np.maximum(load_b.sum(axis=1, keepdims=True), 1)
    return 0.5 * np.abs(a - b).sum(axis=1)


@dataclass
class TraceStats:
    """Everything ``trace_statistics`` computes for one trace.

    Attributes:
        load: ``P`` int64 ``[L, E]``.
        cross: ``R`` int64 ``[L-1, E, E]`` (all top-k x top-k pairs).
        imbalance: float64 ``[L]``, max / mean expert load per layer.
        cv: float64 ``[L]``, std / mean expert load per layer.
        affinity: float64 ``[L-1]``, ``affinity_scores(cross)``.
        top_k: k of the trace (to convert ``cross`` to token units).
    """

    load: np.ndarray
    cross: np.ndarray
    imbalance: np.ndarray
    cv: np.ndarray
    affinity: np.ndarray
    top_k: int
    extra: dict[str, float] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """Flat summary: ``imbalance_max_over_mean`` (mean over layers of max/mean load), its worst layer,
        ``load_cv_mean``, ``affinity_mean`` (mean over layer pairs; NaN-free, 0.0 for one layer) and range."""
        aff = self.affinity if self.affinity.size else np.zeros(1)
        return {
            "imbalance_max_over_mean": float(self.imbalance.mean()),
            "imbalance_worst_layer": float(self.imbalance.max()),
            "load_cv_mean": float(self.cv.mean()),
            "affinity_mean": float(aff.mean()),
            "affinity_min": float(aff.min()),
            "affinity_max": float(aff.max()),
            **self.extra,
        }


def trace_statistics(experts: np.ndarray, num_experts: int) -> TraceStats:
    """Load, cross-layer counts, imbalance and affinity of a trace's ``experts [tokens, layers, top_k]``."""
    load = expert_load(experts, num_experts)
    cross = cross_layer_counts(experts, num_experts)
    return TraceStats(
        load=load,
        cross=cross,
        imbalance=load_imbalance(load),
        cv=load_cv(load),
        affinity=affinity_scores(cross),
        top_k=int(experts.shape[2]),
    )
