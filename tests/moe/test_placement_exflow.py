"""ExFlow-style placement: validity, locality gain, the integer program on a planted instance, hierarchy."""

from __future__ import annotations

import time

import numpy as np
import pytest

from common.errors import ConfigError, InputError
from moe.placement import milp
from moe.placement.deadline import Deadline
from moe.placement.evaluate import cross_gpu_fraction
from moe.placement.exflow import exflow, locality_bound
from moe.placement.simple import contiguous
from moe.stats import cross_layer_counts
from tests.conftest import real_trace_head


@pytest.fixture(scope="module")
def real_pairs() -> np.ndarray:
    experts, e = real_trace_head(20000)
    return cross_layer_counts(experts, e)


def _planted(num_layers: int, e: int, seed: int) -> np.ndarray:
    """Pairs that follow a random permutation between layers: zero crossing is reachable."""
    rng = np.random.default_rng(seed)
    r = np.zeros((num_layers - 1, e, e))
    for li in range(num_layers - 1):
        r[li, np.arange(e), rng.permutation(e)] = rng.integers(5, 50, size=e)
    return r


@pytest.mark.parametrize("method", ["ilp", "sweeps"])
def test_planted_paths_are_kept_local(method: str) -> None:
    r = _planted(4, 8, seed=0)
    pl = exflow(r, 4, 4, method=method, options=milp.SolverOptions(gap=0.0), deadline=Deadline.after(10))
    assert (pl.experts_per_gpu() == 2).all() and (pl.replica_counts() == 1).all()
    assert cross_gpu_fraction(pl, r) == pytest.approx(0.0, abs=1e-12)
    assert pl.info["objective"] == pytest.approx(0.0, abs=1e-12)


def test_real_trace_flat_and_hierarchical(real_pairs: np.ndarray) -> None:
    num_layers = real_pairs.shape[0] + 1
    base = cross_gpu_fraction(contiguous(num_layers, 64, 8), real_pairs)
    for gpn in (8, 4):
        pl = exflow(real_pairs, 8, gpn, deadline=Deadline.after(10))
        assert (pl.experts_per_gpu() == 8).all()
        frac = cross_gpu_fraction(pl, real_pairs)
        assert frac == pytest.approx(pl.info["objective"])
        assert frac < base - 0.1  # at least 10 points less cross-GPU traffic than contiguous
        assert pl.info["bound"] <= pl.info["objective"] and pl.info["hierarchical"] == (gpn == 4)


def test_locality_bound_is_valid(real_pairs: np.ndarray) -> None:
    pl = exflow(real_pairs[:5], 8, 8, method="sweeps")
    kept = (1 - cross_gpu_fraction(pl, real_pairs[:5])) * real_pairs[:5].sum()
    assert kept <= locality_bound(real_pairs[:5], 8) + 1e-6


def test_refusals() -> None:
    with pytest.raises(InputError, match="do not split evenly"):
        exflow(np.ones((2, 6, 6)), 4, 4)
    with pytest.raises(InputError, match="'R' must be"):
        exflow(np.ones((2, 6)), 2, 2)
    with pytest.raises(ConfigError, match="method"):
        exflow(np.ones((2, 4, 4)), 2, 2, method="annealing")


def test_highs_budget_holds_when_its_root_cut_loop_overruns() -> None:
    """The ILP of 16 layers of a synthetic Mixtral-shaped trace: HiGHS's mod-k cut separator ran 8.9 s
    past a 2 s budget here when only HiGHS's own limit applied. A behaviour test of the deadline, not a speed
    benchmark: the slack (1.5 s + 50%) covers a loaded machine, not an overrun of that size."""
    from moe.synthetic import generate_trace

    trace = generate_trace("mixtral_8x7b", 30000, skew=0.5, affinity=0.8, seed=0)
    r = cross_layer_counts(trace.experts, trace.num_experts)[:15]
    budget = 2.0
    t0 = time.monotonic()
    pl = exflow(r, 4, 4, method="ilp", deadline=Deadline.after(budget))
    wall = time.monotonic() - t0
    assert wall <= 1.5 * budget + 1.5, f"placement took {wall:.1f} s for a {budget} s budget"
    assert pl.info["solve_time_s"] <= 1.5 * budget + 1.5
    assert pl.info["status"] in (milp.OPTIMAL, milp.TIME_LIMIT)
    assert (pl.experts_per_gpu() == 2).all() and (pl.replica_counts() == 1).all()
    assert cross_gpu_fraction(pl, r) == pytest.approx(pl.info["objective"])
    # the next solve works (a fresh HiGHS worker when the guard had to stop the last one)
    small = exflow(
        _planted(4, 8, seed=1), 4, 4, options=milp.SolverOptions(gap=0.0), deadline=Deadline.after(10)
    )
    assert small.info["objective"] == pytest.approx(0.0, abs=1e-12)
