"""Solver plumbing: both solvers report status, objective, bound, gap; time limits stop a hard problem."""

from __future__ import annotations

import time

import numpy as np
import pulp
import pytest

from common.errors import ConfigError
from moe.placement import milp
from moe.placement.deadline import Deadline


def _partition(num_items: int, num_bins: int, seed: int) -> pulp.LpProblem:
    """Number partitioning: hard to prove optimal for many items (the LP bound is 0)."""
    w = np.random.default_rng(seed).integers(10**5, 10**6, size=num_items)
    prob = pulp.LpProblem("partition", pulp.LpMinimize)
    x = {
        (b, i): prob.add_variable(f"x_{b}_{i}", cat=pulp.LpBinary)
        for b in range(num_bins)
        for i in range(num_items)
    }
    d = [prob.add_variable(f"d_{b}", lowBound=0) for b in range(num_bins)]
    mean = float(w.sum()) / num_bins
    prob += pulp.lpSum(d)
    for i in range(num_items):
        prob += pulp.lpSum(x[b, i] for b in range(num_bins)) == 1
    for b in range(num_bins):
        t = pulp.lpSum(int(w[i]) * x[b, i] for i in range(num_items))
        prob += d[b] >= t - mean
        prob += d[b] >= mean - t
    return prob


@pytest.mark.parametrize("solver", milp.SOLVERS)
def test_small_problem_optimal_with_bound_and_constant(solver: str) -> None:
    prob = pulp.LpProblem("small", pulp.LpMinimize)
    x = prob.add_variable("x", 0, 10, cat=pulp.LpInteger)
    y = prob.add_variable("y", 0, 10, cat=pulp.LpInteger)
    prob += pulp.LpAffineExpression([(x, -1), (y, -1)], constant=100)
    prob += 2 * x + 3 * y <= 12.5
    res = milp.solve(prob, milp.SolverOptions(solver=solver, gap=0.0), Deadline.after(60))
    assert res.status == milp.OPTIMAL
    assert res.objective == pytest.approx(94.0) and res.bound == pytest.approx(94.0) and res.gap == 0.0
    assert res.size.variables == 2 and res.size.integer_variables == 2 and res.size.constraints == 1
    assert res.to_info()["size"]["nonzeros"] == 2


@pytest.mark.parametrize("solver", milp.SOLVERS)
def test_time_limit_stops_with_best_solution(solver: str) -> None:
    prob = _partition(40, 4, seed=0)
    res = milp.solve(prob, milp.SolverOptions(solver=solver, gap=0.0), Deadline.after(1.0))
    assert res.status in (milp.TIME_LIMIT, milp.OPTIMAL)
    if res.status == milp.TIME_LIMIT:
        assert res.objective is not None and (res.bound is None or res.bound <= res.objective)
    # generous: the solver's own limit plus process start-up on a busy machine; it must not run on
    assert res.solve_time_s < 15


def test_infeasible_is_reported() -> None:
    prob = pulp.LpProblem("inf", pulp.LpMinimize)
    x = prob.add_variable("x", 0, 1, cat=pulp.LpBinary)
    prob += x
    prob += x >= 2
    for solver in milp.SOLVERS:
        assert (
            milp.solve(prob, milp.SolverOptions(solver=solver), Deadline.after(60)).status == milp.INFEASIBLE
        )


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"solver": "gurobi"}, "solver"),
        ({"gap": 1.5}, "gap"),
        ({"threads": 0}, "threads"),
    ],
)
def test_bad_options(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        milp.SolverOptions(**kwargs)


def test_relative_gap() -> None:
    assert milp.relative_gap(10.0, 9.0) == pytest.approx(0.1)
    assert milp.relative_gap(0.0, 0.0) == 0.0
    assert milp.relative_gap(0.0, -1.0) is None
    assert milp.relative_gap(None, 1.0) is None


def test_highs_stops_at_the_callers_deadline() -> None:
    """The solve stops at ``deadline`` (the caller's budget); the best solution so far comes back. A behaviour
    test of the deadline with a generous slack for a loaded machine, not a benchmark."""
    prob = _partition(60, 5, seed=1)
    t0 = time.monotonic()
    res = milp.solve(prob, milp.SolverOptions(gap=0.0), Deadline(t0, t0 + 1.0))
    wall = time.monotonic() - t0
    assert wall <= 1.5 * 1.0 + 1.5, f"solve took {wall:.1f} s for a 1 s deadline"
    assert res.status == milp.TIME_LIMIT and res.objective is not None
    assert res.bound is None or res.bound <= res.objective
    x = [v for v in prob.variables() if v.name.startswith("x_")]
    assert all(v.varValue is not None for v in x)  # the variables hold the returned solution
    assert sum(round(v.varValue) for v in x) == 60  # every item in exactly one bin


def test_highs_same_answer_twice() -> None:
    """A solve that finishes within its limit is deterministic (same objective and values)."""
    out = []
    for _ in range(2):
        prob = _partition(12, 3, seed=2)
        res = milp.solve(prob, milp.SolverOptions(gap=0.0), Deadline.after(30.0))
        assert res.status == milp.OPTIMAL
        out.append((res.objective, [v.varValue for v in prob.variables()]))
    assert out[0] == out[1]


def test_deadline_parts_share_one_budget():
    d = Deadline(100.0, 110.0)
    assert d.budget_s == 10.0 and d.fraction(0.5) == Deadline(100.0, 105.0)
    now = Deadline.after(0.0)
    assert now.expired() and now.left() == 0.0
    assert now.at_least(5.0).left() > 4.0 and now.at_least(5.0).start == now.start
    far = Deadline.after(100.0)
    part = far.share_of_left(0.25)
    assert 24.0 < part.budget_s <= 25.0 and part.end < far.end


def test_placement_status_says_why_a_placement_is_not_optimal():
    later, past = Deadline.after(60), Deadline(time.monotonic() - 2, time.monotonic() - 1)
    assert milp.placement_status(0.01, 0.025, later) == milp.OPTIMAL
    assert milp.placement_status(0.01, 0.025, later, constraints_met=False) == milp.FEASIBLE
    assert milp.placement_status(0.5, 0.025, later) == milp.FEASIBLE  # stopped by itself, gap not closed
    assert milp.placement_status(0.5, 0.025, past) == milp.TIME_LIMIT  # its budget ran out
    assert milp.placement_status(None, 0.025, later) == milp.FEASIBLE
    assert milp.worst_status(milp.OPTIMAL, milp.FEASIBLE) == milp.FEASIBLE
    assert milp.worst_status(milp.FEASIBLE, milp.TIME_LIMIT, milp.OPTIMAL) == milp.TIME_LIMIT
    assert milp.worst_status(milp.OPTIMAL, milp.NO_SOLUTION) == milp.NO_SOLUTION
