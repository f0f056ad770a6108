"""Contiguous, round-robin, random and greedy placements on the real trace and on synthetic loads."""

from __future__ import annotations

import numpy as np
import pytest

from common.errors import InputError
from moe.placement.evaluate import balancedness
from moe.placement.greedy import balanced_pack, greedy
from moe.placement.simple import contiguous, random_placement, round_robin
from moe.stats import expert_load
from tests.conftest import real_trace_head


@pytest.fixture(scope="module")
def real_load() -> np.ndarray:
    experts, e = real_trace_head(20000)
    return expert_load(experts, e)


def _assert_equal_counts(pl, num_gpus: int) -> None:
    assert (pl.replica_counts() == 1).all()
    assert (pl.experts_per_gpu() == pl.num_experts // num_gpus).all()


def test_contiguous_and_round_robin_layouts() -> None:
    c = contiguous(3, 8, 4)
    assert c.assignment[0] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    r = round_robin(3, 8, 4)
    assert r.assignment[2] == [[0, 4], [1, 5], [2, 6], [3, 7]]
    _assert_equal_counts(c, 4)
    _assert_equal_counts(r, 4)


def test_random_is_seeded_and_balanced() -> None:
    a, b, c = (
        random_placement(5, 16, 4, seed=1),
        random_placement(5, 16, 4, seed=1),
        random_placement(5, 16, 4, 2),
    )
    assert a.assignment == b.assignment
    assert a.assignment != c.assignment
    _assert_equal_counts(a, 4)


def test_greedy_on_real_trace_beats_contiguous(real_load: np.ndarray) -> None:
    num_layers, e = real_load.shape
    pl = greedy(real_load, 8)
    _assert_equal_counts(pl, 8)
    assert pl.num_layers == num_layers
    assert balancedness(pl, real_load).mean() > balancedness(contiguous(num_layers, e, 8), real_load).mean()
    assert balancedness(pl, real_load).min() > 0.95


def test_balanced_pack_respects_capacity_and_is_lpt() -> None:
    w = np.array([10.0, 9, 8, 1, 1, 1])
    bins = balanced_pack(w, 3, 2)
    assert np.bincount(bins, minlength=3).tolist() == [2, 2, 2]
    assert sorted(np.bincount(bins, weights=w).tolist()) == [9.0, 10.0, 11.0]


@pytest.mark.parametrize(
    ("experts", "gpus", "needle"),
    [(4, 8, "8 GPUs but only 4 experts"), (10, 4, "do not split evenly over 4 GPUs")],
)
def test_unplaceable_shapes_are_refused_with_numbers(experts: int, gpus: int, needle: str) -> None:
    with pytest.raises(InputError, match=needle):
        contiguous(2, experts, gpus)
    with pytest.raises(InputError, match=needle):
        greedy(np.ones((2, experts)), gpus)


def test_greedy_rejects_bad_loads() -> None:
    with pytest.raises(InputError, match="'P'"):
        greedy(np.array([[1.0, -1.0]]), 1)
