"""Routing statistics: by hand on a small trace, against each other, and on the real trace."""

from __future__ import annotations

import numpy as np
import pytest

from moe.stats import (
    affinity_lift,
    affinity_scores,
    cross_layer_counts,
    expert_load,
    load_cv,
    load_distance,
    load_imbalance,
    next_layer_distribution,
    trace_statistics,
)
from moe.trace import load_trace
from tests.conftest import REAL_TRACE, needs_real_trace

# 3 tokens, 2 layers, top-2 of 4 experts.
SMALL = np.array(
    [
        [[0, 1], [2, 3]],
        [[1, 0], [2, 0]],
        [[3, 1], [3, 2]],
    ],
    dtype=np.uint8,
)


def test_load_by_hand() -> None:
    p = expert_load(SMALL, 4)
    np.testing.assert_array_equal(p, [[2, 3, 0, 1], [1, 0, 3, 2]])
    assert p.dtype == np.int64


@pytest.mark.parametrize("method", ["bincount", "matmul"])
def test_cross_counts_by_hand(method: str) -> None:
    r = cross_layer_counts(SMALL, 4, method=method)
    want = np.zeros((1, 4, 4), dtype=np.int64)
    for e1, e2 in [
        (0, 2),
        (0, 3),
        (1, 2),
        (1, 3),
        (1, 2),
        (1, 0),
        (0, 2),
        (0, 0),
        (3, 3),
        (3, 2),
        (1, 3),
        (1, 2),
    ]:
        want[0, e1, e2] += 1
    np.testing.assert_array_equal(r, want)
    p = expert_load(SMALL, 4)
    np.testing.assert_array_equal(r[0].sum(axis=1) // 2, p[0])  # token units: divide by top_k
    np.testing.assert_array_equal(r[0].sum(axis=0) // 2, p[1])


def test_conditional_distribution_by_hand() -> None:
    q = next_layer_distribution(cross_layer_counts(SMALL, 4))
    np.testing.assert_allclose(q[0, 0], [1 / 4, 0, 2 / 4, 1 / 4])
    np.testing.assert_allclose(q[0, 2], 0)  # expert 2 got no tokens in layer 0
    np.testing.assert_allclose(q[0, 1].sum(), 1)


def test_imbalance_and_cv() -> None:
    p = np.array([[2, 2, 2, 2], [8, 0, 0, 0]])
    np.testing.assert_allclose(load_imbalance(p), [1.0, 4.0])
    np.testing.assert_allclose(load_cv(p), [0.0, np.sqrt(3.0)])


def test_affinity_extremes() -> None:
    rng = np.random.default_rng(0)
    n, e = 200_000, 16
    a = rng.integers(0, e, n)
    independent = np.stack([a, rng.integers(0, e, n)], axis=1)[:, :, None]
    determined = np.stack([a, (a * 5 + 3) % e], axis=1)[:, :, None]
    assert affinity_scores(cross_layer_counts(independent, e))[0] < 1e-3
    np.testing.assert_allclose(affinity_scores(cross_layer_counts(determined, e)), [1.0])
    lift = affinity_lift(cross_layer_counts(determined, e))
    np.testing.assert_allclose(lift[0, 2, (2 * 5 + 3) % e], e, rtol=0.05)


def test_methods_agree_on_random_trace() -> None:
    rng = np.random.default_rng(1)
    ex = np.argsort(rng.random((3000, 5, 32)), axis=2)[:, :, :4]
    np.testing.assert_array_equal(
        cross_layer_counts(ex, 32, "bincount"), cross_layer_counts(ex, 32, "matmul")
    )
    assert cross_layer_counts(ex[:, :1], 32).shape == (0, 32, 32)
    with pytest.raises(ValueError, match="method"):
        cross_layer_counts(ex, 32, "loop")


def test_load_distance() -> None:
    a = np.array([[1, 1, 0, 0]])
    np.testing.assert_allclose(load_distance(a, a * 3), [0.0])
    np.testing.assert_allclose(load_distance(a, np.array([[0, 0, 1, 1]])), [1.0])


@needs_real_trace
def test_real_trace_totals_and_ranges() -> None:
    tr = load_trace(REAL_TRACE)
    st = trace_statistics(tr.experts, tr.num_experts)
    t, num_layers, k = tr.experts.shape
    np.testing.assert_array_equal(st.load.sum(axis=1), np.full(num_layers, t * k))
    np.testing.assert_array_equal(st.cross.sum(axis=(1, 2)), np.full(num_layers - 1, t * k * k))
    np.testing.assert_array_equal(st.cross.sum(axis=2) // k, st.load[:-1])
    np.testing.assert_array_equal(st.cross.sum(axis=1) // k, st.load[1:])
    # The README's measurement: the most loaded expert gets 1.3x to 2.3x the mean (within rounding).
    assert 1.2 < st.imbalance.min() and st.imbalance.max() < 2.7
    m = st.metrics()
    assert 0.03 < m["affinity_mean"] < 0.3  # strong inter-layer dependence, far above independence
    sub = tr.experts[:5000]
    np.testing.assert_array_equal(
        cross_layer_counts(sub, 64, "bincount"), cross_layer_counts(sub, 64, "matmul")
    )
