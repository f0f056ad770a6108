"""One seed for Python, NumPy and torch (CUDA too when present), plus deterministic algorithms."""

from __future__ import annotations

import hashlib
import os
import random
import sys

import numpy as np


def seed_everything(seed: int, deterministic: bool = True) -> np.random.Generator:
    """Seed ``random``, NumPy's global state and, when the process has loaded it, torch (CPU and CUDA).

    Modules that use torch import it at module level, so torch is loaded before a runner seeds; a run that
    never touches torch does not pay for importing it.

    Args:
        seed: a non-negative integer.
        deterministic: on CUDA, ask torch for deterministic algorithms (``warn_only`` so that an operation
            without a deterministic kernel warns instead of failing) and set the cuBLAS workspace variable.

    Returns:
        A fresh ``numpy.random.Generator`` seeded with ``seed``; prefer it over the global state.
    """
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - seeding the legacy global state is the point
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    torch = sys.modules.get("torch")
    if torch is None:  # a run that never loaded torch needs no torch seed (and skips its 2-7 s import)
        return np.random.default_rng(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
        # CPU kernels are deterministic already; the switch loads torch's compiler (seconds)
        if deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
    return np.random.default_rng(seed)


def derive_seed(seed: int, *keys: int | str) -> int:
    """A child seed for a sub-task (a client, a layer, a batch), stable across runs and platforms.

    >>> derive_seed(0, "client", 3) == derive_seed(0, "client", 3)
    True
    """
    entropy = [int(seed)] + [k if isinstance(k, int) else _str_entropy(k) for k in keys]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint32)[0])


def _str_entropy(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")
