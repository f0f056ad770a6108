"""Fixtures shared by the MoE tests."""

from __future__ import annotations

import numpy as np
import pytest

from moe.synthetic import generate_trace


@pytest.fixture(scope="module")
def trace() -> tuple[np.ndarray, int]:
    """A DeepSeek-V2-Lite-shaped synthetic trace, 4,000 tokens of its first 5 layers: (int64 experts
    ``[T, 5, k]``, experts per layer)."""
    t = generate_trace("deepseek_v2_lite", 4000, skew=1.0, affinity=0.9, seed=5)
    return t.experts[:, :5].astype(np.int64), t.num_experts
