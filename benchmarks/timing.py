"""Wall-clock timing for the benchmarks: the best of several repeats, and the last result."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from common.threads import limit_threads

T = TypeVar("T")
limit_threads()  # every benchmark imports this module: one BLAS / torch thread (SUITE_THREADS) unless set


def timed(fn: Callable[[], T], repeats: int) -> tuple[float, T]:
    """(best wall time in seconds over ``repeats`` calls of ``fn``, the last call's result)."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def best_time(fn: Callable[[], object], repeats: int) -> float:
    """Best wall time in seconds over ``repeats`` calls of ``fn``."""
    return timed(fn, repeats)[0]
