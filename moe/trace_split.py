"""Cutting traces: by prompt into a profile part and an evaluation part, by token range, into batches.

Splits follow prompt boundaries so that no prompt feeds both the profile and the evaluation (tokens of one
prompt are correlated). A trace without ``prompt_offsets`` counts as a single prompt.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from common.errors import InputError
from moe.trace import Trace


def profile_prompt_count(num_prompts: int, profile_fraction: float) -> int:
    """Prompts in the profile part: ``round(fraction * prompts)`` clipped to ``1..prompts-1``.

    The synthetic generator uses the same rule to start its drift exactly at the evaluation part.
    """
    if not 0.0 < float(profile_fraction) < 1.0:
        raise InputError(f"profile_fraction must be in (0, 1), got {profile_fraction!r}")
    if num_prompts < 2:
        raise InputError(f"splitting by prompt needs at least 2 prompts, the trace has {num_prompts}")
    return int(min(max(round(float(profile_fraction) * num_prompts), 1), num_prompts - 1))


def _offsets(trace: Trace) -> np.ndarray:
    if trace.prompt_offsets is None:
        return np.array([0, trace.num_tokens], dtype=np.int64)
    return trace.prompt_offsets.astype(np.int64, copy=False)


def select_prompts(trace: Trace, prompts: np.ndarray) -> Trace:
    """The sub-trace made of ``prompts`` (indices, in the given order), with new ``prompt_offsets``.

    Args:
        trace: the source trace.
        prompts: int ``[n]`` prompt indices, distinct, each in ``0..num_prompts-1``.

    Returns:
        A trace whose prompt i is prompt ``prompts[i]`` of ``trace``; ``meta`` gains ``source_prompts``
        only when it is short (at most 10,000 prompts) and is otherwise copied.
    """
    off = _offsets(trace)
    idx = np.asarray(prompts, dtype=np.int64)
    if idx.ndim != 1 or idx.size == 0:
        raise InputError(f"select_prompts: expected a non-empty 1-d index array, got shape {idx.shape}")
    if idx.min() < 0 or idx.max() >= len(off) - 1:
        raise InputError(f"select_prompts: prompt indices must be in 0..{len(off) - 2}")
    if np.unique(idx).size != idx.size:
        raise InputError("select_prompts: prompt indices repeat")
    starts, lengths = off[idx], off[idx + 1] - off[idx]
    new_off = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    # Row index of every selected token: start of its prompt + position inside it (no Python token loop).
    rows = np.repeat(starts - new_off[:-1], lengths) + np.arange(int(new_off[-1]), dtype=np.int64)
    return Trace(
        experts=trace.experts[rows],
        num_experts=trace.num_experts,
        weights=None if trace.weights is None else trace.weights[rows],
        prompt_offsets=new_off,
        meta=dict(trace.meta),
        slot_order=trace.slot_order,
    )


def slice_tokens(trace: Trace, start: int, stop: int) -> Trace:
    """Rows ``start:stop`` (a view, no copy); prompts cut by the window are clipped to it.

    Raises:
        InputError: when the window is empty or outside ``0..num_tokens``.
    """
    if not 0 <= start < stop <= trace.num_tokens:
        raise InputError(f"slice_tokens: need 0 <= start < stop <= {trace.num_tokens}, got {start}:{stop}")
    off = None
    if trace.prompt_offsets is not None:
        inner = trace.prompt_offsets[(trace.prompt_offsets > start) & (trace.prompt_offsets < stop)]
        off = np.concatenate([[start], inner, [stop]]).astype(np.int64) - start
    return Trace(
        experts=trace.experts[start:stop],
        num_experts=trace.num_experts,
        weights=None if trace.weights is None else trace.weights[start:stop],
        prompt_offsets=off,
        meta=dict(trace.meta),
        slot_order=trace.slot_order,
    )


def head(trace: Trace, max_tokens: int | None) -> Trace:
    """The first ``max_tokens`` tokens (all of them when ``None`` or larger than the trace)."""
    if max_tokens is None or max_tokens >= trace.num_tokens:
        return trace
    if max_tokens < 1:
        raise InputError(f"max_tokens must be a positive integer or null, got {max_tokens!r}")
    return slice_tokens(trace, 0, int(max_tokens))


def split_by_prompt(
    trace: Trace, profile_fraction: float = 0.5, seed: int | None = None
) -> tuple[Trace, Trace]:
    """Split into (profile, evaluation) parts along prompt boundaries.

    Args:
        trace: a trace with at least 2 prompts.
        profile_fraction: share of the prompts (not tokens) that go to the profile part, in (0, 1); the
            count is ``profile_prompt_count(prompts, profile_fraction)``.
        seed: ``None``: the first prompts (in file order) profile, the rest evaluate; an integer: prompts
            are drawn at random with this seed (each part keeps file order).

    Returns:
        ``(profile, evaluation)``; together they hold every token exactly once.
    """
    n = trace.num_prompts
    if trace.prompt_offsets is None:
        raise InputError(
            "split_by_prompt: the trace has no 'prompt_offsets' (one prompt); use split_by_tokens instead"
        )
    n_prof = profile_prompt_count(n, profile_fraction)
    if seed is None:
        order = np.arange(n, dtype=np.int64)
    else:
        order = np.random.default_rng(int(seed)).permutation(n).astype(np.int64)
    prof, evaluation = np.sort(order[:n_prof]), np.sort(order[n_prof:])
    return select_prompts(trace, prof), select_prompts(trace, evaluation)


def split_by_tokens(trace: Trace, profile_fraction: float = 0.5) -> tuple[Trace, Trace]:
    """Split at token ``round(fraction * tokens)`` (for traces without prompt boundaries)."""
    if not 0.0 < float(profile_fraction) < 1.0:
        raise InputError(f"profile_fraction must be in (0, 1), got {profile_fraction!r}")
    if trace.num_tokens < 2:
        raise InputError(f"split_by_tokens: need at least 2 tokens, the trace has {trace.num_tokens}")
    cut = int(min(max(round(float(profile_fraction) * trace.num_tokens), 1), trace.num_tokens - 1))
    return slice_tokens(trace, 0, cut), slice_tokens(trace, cut, trace.num_tokens)


def batches(trace: Trace, n: int, drop_last: bool = False) -> Iterator[Trace]:
    """Consecutive batches of ``n`` tokens (views); the last one is shorter unless ``drop_last``.

    Batches ignore prompt boundaries (a serving batch mixes prompts); each batch's ``prompt_offsets`` are
    the prompts clipped to it.
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise InputError(f"batches: batch size must be a positive integer, got {n!r}")
    n = int(n)
    for start in range(0, trace.num_tokens, n):
        stop = min(start + n, trace.num_tokens)
        if drop_last and stop - start < n:
            return
        yield slice_tokens(trace, start, stop)


def split_windows(trace: Trace, num_windows: int) -> list[Trace]:
    """Cut ``trace`` into ``num_windows`` consecutive windows of whole prompts, in file (prompt) order.

    Window w holds prompts ``np.array_split(range(prompts), num_windows)[w]``: equal prompt counts, the first
    ``prompts % num_windows`` windows one prompt longer. Together the windows hold every token once, in order.

    Raises:
        InputError: when ``num_windows`` is not an integer >= 1 or exceeds the trace's prompts.
    """
    if isinstance(num_windows, bool) or not isinstance(num_windows, int | np.integer) or num_windows < 1:
        raise InputError(f"windows must be a positive integer, got {num_windows!r}")
    n = trace.num_prompts
    if num_windows > n:
        raise InputError(f"{num_windows} windows need at least {num_windows} prompts, the trace has {n}")
    if num_windows == 1:
        return [trace]
    if trace.prompt_offsets is None:  # unreachable: one prompt allows one window only
        raise InputError("split_windows: the trace has no 'prompt_offsets'")
    return [
        select_prompts(trace, idx) for idx in np.array_split(np.arange(n, dtype=np.int64), int(num_windows))
    ]
