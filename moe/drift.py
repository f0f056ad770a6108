"""Synthetic routing drift over time: the hot experts of a windowed trace shift to other ids at a set rate.

At every window boundary, in every layer independently, ``k = round(rate x E)`` experts chosen at random
exchange identities (a cyclic shift among them; ``k = 1`` is raised to 2 since one expert cannot move alone):
the tokens that chose expert ``e`` now choose ``perm[e]``. The shifts compose, so window w is ``w`` steps away
from window 0 and a placement profiled on window ``w - 1`` misses exactly one step's shift. ``rate = 0`` keeps
the trace as recorded; ``rate = 1`` relabels every expert at every boundary. The load and co-activation
statistics of each window are unchanged up to the relabelling, so drift only moves *which* experts are hot.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from common.errors import InputError
from moe.trace import Trace


def check_rate(rate: float) -> float:
    """``rate`` as a float in [0, 1]; ``InputError`` otherwise."""
    ok = isinstance(rate, int | float | np.floating) and not isinstance(rate, bool) and 0.0 <= rate <= 1.0
    if not ok:
        raise InputError(f"drift rate must be a number in [0, 1], got {rate!r}")
    return float(rate)


def drift_permutations(
    num_windows: int, num_layers: int, num_experts: int, rate: float, seed: int
) -> np.ndarray:
    """int64 ``[W, L, E]``: ``perm[w, l, e]`` is the id that expert ``e`` of the recording has in window ``w``.

    ``perm[0]`` is the identity; ``perm[w] = shift_w o perm[w - 1]`` with ``shift_w`` as in the module
    docstring, drawn from ``np.random.default_rng(seed)``.
    """
    rate = check_rate(rate)
    k = int(round(rate * num_experts))
    k = 0 if k == 0 else min(max(k, 2), num_experts)
    rng = np.random.default_rng(int(seed))
    out = np.empty((num_windows, num_layers, num_experts), dtype=np.int64)
    out[0] = np.arange(num_experts)
    for w in range(1, num_windows):
        out[w] = out[w - 1]
        if k == 0:
            continue
        for li in range(num_layers):
            chosen = rng.choice(num_experts, size=k, replace=False)
            shift = np.arange(num_experts)
            shift[chosen] = np.roll(chosen, 1)
            out[w, li] = shift[out[w - 1, li]]
    return out


def apply_drift(windows: list[Trace], rate: float, seed: int) -> list[Trace]:
    """The windows with their expert ids relabelled by ``drift_permutations`` (window 0 unchanged).

    Args:
        windows: consecutive windows of one trace (same layers and experts).
        rate: in [0, 1], the share of experts per layer that change identity at each window boundary.
        seed: seed of the shifts.
    """
    if not windows:
        raise InputError("apply_drift: no windows")
    first = windows[0]
    perms = drift_permutations(len(windows), first.num_layers, first.num_experts, rate, seed)
    if check_rate(rate) == 0.0:
        return list(windows)
    out = []
    for w, tr in enumerate(windows):
        ex = np.asarray(tr.experts)
        relabelled = np.empty_like(ex)
        for li in range(tr.num_layers):
            relabelled[:, li, :] = perms[w, li][ex[:, li, :].astype(np.int64)].astype(ex.dtype)
        meta = dict(tr.meta, drift_rate=float(rate), drift_window=w)
        out.append(dataclasses.replace(tr, experts=relabelled, meta=meta))
    return out
