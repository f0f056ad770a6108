"""Thread limits for BLAS and torch, set once per process.

Two cores run the tests, the sweeps and the federated clients here: a BLAS pool of two threads in each of
two processes oversubscribes them (an ``eigh`` measured 3x slower). Every entry point calls
``limit_threads()`` once, before heavy work; ``SUITE_THREADS`` (default 1) raises the limit on a big machine.
"""

from __future__ import annotations

import os

_DONE: dict[str, int] = {}


def thread_count() -> int:
    """Threads per process: ``SUITE_THREADS`` if set (a positive integer), else 1."""
    raw = os.environ.get("SUITE_THREADS", "1")
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"SUITE_THREADS: expected a positive integer, got {raw!r}")
    return n


def limit_threads(n: int | None = None) -> int:
    """Limit BLAS/OpenMP pools (threadpoolctl) and torch's intra-op pool to ``n`` threads (default:
    ``thread_count()``). Idempotent; returns the limit in force.

    Environment variables are set too, so that worker processes started later (Ray, torchrun, joblib) inherit
    the limit before their libraries load.
    """
    n = thread_count() if n is None else int(n)
    if _DONE.get("n") == n:
        return n
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=n)
    try:
        import torch

        torch.set_num_threads(n)
    except ImportError:  # torch is a dependency; tolerate its absence in tools that do not need it
        pass
    _DONE["n"] = n
    return n
