"""Synthetic routing traces with the shapes of real MoE models and controllable skew, affinity and drift.

Generative model (all draws from ``numpy.random.default_rng`` streams derived from ``seed``):

- Popularity: layer l has a Zipf popularity ``p_l[e] ∝ (rank_l[e] + 1) ** -skew_l`` with a random rank
  order per layer (``skew = 0``: uniform; larger: a few hot experts).
- Affinity: each expert e1 of layer l has ``fanout`` preferred successors in layer l+1, with Dirichlet(1)
  weights (a sparse transition matrix ``T_l``). A token whose leading (first-drawn) choice in layer l was
  ``c_1`` picks its layer l+1 experts from ``q = (1 - affinity) * p_l+1 + affinity * T_l[c_1]``.
- Choice: ``top_k`` distinct experts drawn from ``q`` without replacement (Plackett-Luce: the k smallest of
  ``Exp(1) / q``), in draw order, like a router's descending order. Gate weights (optional) are ``q`` at the
  chosen experts, renormalised over the top-k.
- Prompts: lengths ~ geometric with mean ``tokens_per_prompt``; consecutive prompts are independent.
- Drift: prompts from ``profile_prompt_count(prompts, drift_start)`` on (the evaluation part of a
  ``split_by_prompt(trace, drift_start)`` split) use ``(1 - drift) * old + drift * new`` popularity and
  transitions, where ``new`` are independent draws of the same kind. ``drift = 0``: one stationary model.

Cost: O(tokens * layers * E) vectorised work; a million Mixtral-8x7B tokens take a few seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from common.errors import InputError
from moe.trace import Trace, expert_dtype
from moe.trace_split import profile_prompt_count


@dataclass(frozen=True)
class ModelShape:
    """The routing shape of a MoE model: E routed experts, top-k, MoE layers."""

    name: str
    num_experts: int
    top_k: int
    num_layers: int


PRESETS: dict[str, ModelShape] = {
    s.name: s
    for s in (
        ModelShape("mixtral_8x7b", num_experts=8, top_k=2, num_layers=32),
        ModelShape("deepseek_v2_lite", num_experts=64, top_k=6, num_layers=26),
        ModelShape("olmoe", num_experts=64, top_k=8, num_layers=16),
        ModelShape("qwen3_235b", num_experts=128, top_k=8, num_layers=94),
        ModelShape("deepseek_v3", num_experts=256, top_k=8, num_layers=58),
    )
}

_BLOCK_ELEMS = (
    1 << 24
)  # tokens * E * k per block: bounds memory; fixed so results do not depend on the machine


def resolve_shape(shape: str | ModelShape) -> ModelShape:
    """A preset name or a ``ModelShape``, checked."""
    if isinstance(shape, str):
        if shape not in PRESETS:
            raise InputError(f"synthetic trace: unknown preset {shape!r}; expected one of {sorted(PRESETS)}")
        return PRESETS[shape]
    for key in ("num_experts", "top_k", "num_layers"):
        v = getattr(shape, key)
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
            raise InputError(f"synthetic trace: '{key}' must be a positive integer, got {v!r}")
    if shape.top_k > shape.num_experts:
        raise InputError(f"synthetic trace: top_k {shape.top_k} exceeds num_experts {shape.num_experts}")
    return shape


def _per_layer(value: float | Sequence[float], num_layers: int, name: str) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(value, dtype=np.float64))
    if arr.size == 1:
        arr = np.full(num_layers, float(arr[0]))
    if arr.shape != (num_layers,):
        raise InputError(
            f"synthetic trace: '{name}' must be a number or a list of {num_layers}, got {value!r}"
        )
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise InputError(f"synthetic trace: '{name}' must be finite and >= 0, got {value!r}")
    return arr


def _check_unit(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating) or not 0 <= value <= 1:
        raise InputError(f"synthetic trace: '{name}' must be a number in [0, 1], got {value!r}")
    return float(value)


def zipf_popularity(skew: np.ndarray, num_experts: int, rng: np.random.Generator) -> np.ndarray:
    """float64 ``[L, E]``: per layer, Zipf weights ``(rank + 1) ** -skew[l]`` in a random expert order."""
    ranks = np.argsort(rng.random((len(skew), num_experts)), axis=1)
    pop = (ranks + 1.0) ** -skew[:, None]
    return pop / pop.sum(axis=1, keepdims=True)


def sparse_transitions(
    num_layers: int, num_experts: int, fanout: int, rng: np.random.Generator
) -> np.ndarray:
    """float64 ``[L-1, E, E]``: row e1 of slice l has ``fanout`` non-zero Dirichlet(1) weights summing to 1."""
    e = num_experts
    succ = np.argsort(rng.random((num_layers - 1, e, e)), axis=2)[:, :, :fanout]
    w = rng.standard_exponential((num_layers - 1, e, fanout))
    w /= w.sum(axis=2, keepdims=True)
    t = np.zeros((num_layers - 1, e, e))
    np.put_along_axis(t, succ, w, axis=2)
    return t


def _prompt_offsets(num_tokens: int, tokens_per_prompt: float, rng: np.random.Generator) -> np.ndarray:
    """int64 ``[prompts + 1]``: geometric lengths (mean ``tokens_per_prompt``, at least 1), cut at the end."""
    lengths: list[np.ndarray] = []
    total = 0
    p = min(1.0, 1.0 / float(tokens_per_prompt))
    while total < num_tokens:
        draw = rng.geometric(p, size=max(16, int(2 * (num_tokens - total) * p) + 2))
        lengths.append(draw)
        total += int(draw.sum())
    off = np.concatenate([[0], np.cumsum(np.concatenate(lengths))])
    cut = int(np.searchsorted(off, num_tokens, side="left"))
    off = off[: cut + 1].astype(np.int64)
    off[-1] = num_tokens
    return off


def _draw_top_k(pop: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """int ``[n, k]``: k distinct columns per row drawn ∝ ``pop [n, E]`` without replacement, in draw order
    (Plackett-Luce: the k smallest of ``Exp(1) / pop``)."""
    keys = rng.standard_exponential(pop.shape, dtype=np.float32)
    keys += np.float32(1e-30)  # an exact 0 draw would make 0 / 0 for a zero-probability expert
    with np.errstate(divide="ignore"):
        keys /= pop
    rows = np.arange(pop.shape[0])
    out = np.empty((pop.shape[0], k), dtype=np.intp)
    for j in range(k):  # k passes of argmin: faster than argpartition for the small k of MoE routers
        col = np.argmin(keys, axis=1)
        out[:, j] = col
        keys[rows, col] = np.inf
    return out


def _sample_segment(
    n: int,
    pop: np.ndarray,
    mix: np.ndarray,
    k: int,
    rng: np.random.Generator,
    with_weights: bool,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Route ``n`` tokens through all layers. ``pop`` ``[L, E]`` popularity, ``mix`` ``[L-1, E, E]`` the
    affinity-mixed transition rows. Returns experts ``[n, L, k]`` (compact dtype) and weights or ``None``."""
    num_layers, e = pop.shape
    experts = np.empty((n, num_layers, k), dtype=expert_dtype(e))
    weights = np.empty((n, num_layers, k), dtype=np.float32) if with_weights else None
    pop32, mix32 = pop.astype(np.float32), mix.astype(np.float32)
    block = max(1, _BLOCK_ELEMS // (e * k))
    for start in range(0, n, block):
        stop = min(n, start + block)
        prev: np.ndarray | None = None
        for layer in range(num_layers):
            if prev is None:
                q = np.broadcast_to(pop32[layer], (stop - start, e))
            else:
                q = mix32[layer - 1][prev[:, 0]]  # [b, E]: the row of the token's leading (first) choice
            chosen = _draw_top_k(q, k, rng)
            experts[start:stop, layer] = chosen
            if weights is not None:
                gate = np.take_along_axis(q, chosen, axis=1)
                weights[start:stop, layer] = gate / gate.sum(axis=1, keepdims=True)
            prev = chosen
    return experts, weights


def _checked(
    ms: ModelShape,
    num_tokens: Any,
    seed: Any,
    skew: float | Sequence[float],
    affinity: float,
    drift: float,
    fanout: int | None,
    tokens_per_prompt: float,
) -> tuple[np.ndarray, float, float, int]:
    """Validate ``generate_trace``'s knobs; returns per-layer skews, affinity, drift and fanout."""
    e, k = int(ms.num_experts), int(ms.top_k)
    if isinstance(num_tokens, bool) or not isinstance(num_tokens, int | np.integer) or num_tokens < 1:
        raise InputError(f"synthetic trace: 'num_tokens' must be a positive integer, got {num_tokens!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise InputError(f"synthetic trace: 'seed' must be a non-negative integer, got {seed!r}")
    fanout = k if fanout is None else fanout
    if isinstance(fanout, bool) or not isinstance(fanout, int | np.integer) or not k <= fanout <= e:
        raise InputError(
            f"synthetic trace: 'fanout' must be an integer in {k}..{e} (top_k..E), got {fanout!r}"
        )
    if not float(tokens_per_prompt) >= 1:
        raise InputError(f"synthetic trace: 'tokens_per_prompt' must be >= 1, got {tokens_per_prompt!r}")
    skews = _per_layer(skew, int(ms.num_layers), "skew")
    return skews, _check_unit(affinity, "affinity"), _check_unit(drift, "drift"), int(fanout)


def _segments(
    ms: ModelShape,
    num_tokens: int,
    skews: np.ndarray,
    fanout: int,
    drift: float,
    drift_start: float,
    offsets: np.ndarray,
    structure: np.random.Generator,
) -> tuple[list[tuple[int, np.ndarray, np.ndarray]], int | None]:
    """``(tokens, popularity [L, E], transitions [L-1, E, E])`` per stretch of the trace: one, or two when
    the evaluation part drifts (from prompt ``drift_prompt`` on); and that prompt (``None`` without drift)."""
    e, num_layers = int(ms.num_experts), int(ms.num_layers)
    pop = zipf_popularity(skews, e, structure)
    trans = sparse_transitions(num_layers, e, fanout, structure) if num_layers > 1 else np.zeros((0, e, e))
    if not (drift > 0 and len(offsets) > 2):
        return [(num_tokens, pop, trans)], None
    drift_prompt = profile_prompt_count(len(offsets) - 1, drift_start)
    pop_new = zipf_popularity(skews, e, structure)
    trans_new = sparse_transitions(num_layers, e, fanout, structure) if num_layers > 1 else trans
    cut = int(offsets[drift_prompt])
    drifted = (num_tokens - cut, (1 - drift) * pop + drift * pop_new, (1 - drift) * trans + drift * trans_new)
    return [(cut, pop, trans), drifted], drift_prompt


def generate_trace(
    shape: str | ModelShape,
    num_tokens: int,
    skew: float | Sequence[float] = 1.0,
    affinity: float = 0.5,
    drift: float = 0.0,
    seed: int = 0,
    *,
    fanout: int | None = None,
    tokens_per_prompt: float = 256.0,
    drift_start: float = 0.5,
    with_weights: bool = False,
) -> Trace:
    """Generate a synthetic routing trace (see the module docstring for the model).

    Args:
        shape: a ``PRESETS`` name (``mixtral_8x7b``, ``deepseek_v2_lite``, ``olmoe``, ``qwen3_235b``,
            ``deepseek_v3``) or a ``ModelShape``.
        num_tokens: tokens (rows) to generate, >= 1.
        skew: Zipf exponent of expert popularity, one number or one per layer; 0 = uniform.
        affinity: weight in [0, 1] of the sparse transition structure against popularity.
        drift: in [0, 1]; how far the evaluation part's popularity and transitions move to fresh ones.
        seed: non-negative integer; same arguments and seed give identical traces.
        fanout: preferred successors per expert, in ``top_k..E`` (default ``top_k``: the sparsest, so
            ``affinity=1`` makes a token's next set one of E possible sets).
        tokens_per_prompt: mean prompt length (geometric), >= 1.
        drift_start: profile fraction of the prompts before the drift (see ``profile_prompt_count``).
        with_weights: also produce gate weights ``[tokens, layers, top_k]`` (float32).

    Returns:
        A validated ``Trace`` with ``prompt_offsets``; ``meta`` records every knob and ``drift_prompt``
        (the first drifted prompt, or ``None``).
    """
    ms = resolve_shape(shape)
    e, k = int(ms.num_experts), int(ms.top_k)
    skews, affinity, drift, fanout = _checked(
        ms, num_tokens, seed, skew, affinity, drift, fanout, tokens_per_prompt
    )
    structure = np.random.default_rng([int(seed), 0])
    routing = np.random.default_rng([int(seed), 1])
    offsets = _prompt_offsets(
        int(num_tokens), float(tokens_per_prompt), np.random.default_rng([int(seed), 2])
    )
    segments, drift_prompt = _segments(
        ms, int(num_tokens), skews, fanout, drift, drift_start, offsets, structure
    )
    parts_e, parts_w = [], []
    for n, p, t in segments:
        mix = affinity * t + (1 - affinity) * p[1:, None, :]
        ex, w = _sample_segment(n, p, mix, k, routing, with_weights)
        parts_e.append(ex)
        parts_w.append(w)
    experts = parts_e[0] if len(parts_e) == 1 else np.concatenate(parts_e)
    weights = None
    if with_weights:
        weights = parts_w[0] if len(parts_w) == 1 else np.concatenate(parts_w)  # type: ignore[arg-type]
    meta = {
        "source": "synthetic",
        "model": ms.name,
        "skew": skews.tolist() if np.ndim(skew) else float(skew),
        "affinity": affinity,
        "drift": drift,
        "drift_start": float(drift_start),
        "drift_prompt": drift_prompt,
        "fanout": int(fanout),
        "tokens_per_prompt": float(tokens_per_prompt),
        "seed": int(seed),
    }
    return Trace(experts, e, weights=weights, prompt_offsets=offsets, meta=meta).validate("synthetic trace")
