"""MoETuner stage 2 with ``stage2_bound: tight``: the node-threshold and sorted bounds, the chain search and
node symmetry breaking, each against brute force on toy cases."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from common.errors import ConfigError
from moe.placement import milp
from moe.placement import moetuner_bottleneck as bn
from moe.placement import moetuner_bounds as mb
from moe.placement import moetuner_chain as mc
from moe.placement import moetuner_stage1 as s1
from moe.placement import moetuner_stage2 as s2
from moe.placement.deadline import Deadline
from moe.placement.moetuner import MoETuner


def _two_level(nodes: int, gpn: int, hi: float = 900.0, lo: float = 100.0) -> np.ndarray:
    node = np.arange(nodes * gpn) // gpn
    b = np.where(node[:, None] == node[None, :], hi, lo).astype(float)
    np.fill_diagonal(b, 0.0)
    return b


def _boundary_optimum(c: np.ndarray, b: np.ndarray) -> float:
    """The cheapest slowest link of one boundary over every pair of permutations (brute force)."""
    perms = mc.permutations(b.shape[0])
    return float(mc.transition_costs(c[None], b, perms)[0].min())


def _brute(c: np.ndarray, sizes: np.ndarray, b: np.ndarray, window: tuple[int, int]) -> float:
    """Stage 2 optimum over every mapping with every GPU's experts in ``window`` (brute force)."""
    best = np.inf
    lo, hi = window
    for rows in itertools.product(itertools.permutations(range(b.shape[0])), repeat=sizes.shape[0]):
        mapping = np.array(rows)
        mem = s2.memory_per_gpu(mapping, sizes)
        if mem.min() >= lo and mem.max() <= hi:
            best = min(best, s2.boundary_costs(mapping, c, b).sum())
    return float(best)


def _toy(num_layers: int, g: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Skewed cluster traffic ``[L-1, G, G]`` and unequal cluster sizes ``[L, G]`` (3 experts per GPU)."""
    rng = np.random.default_rng(seed)
    c = np.floor(rng.pareto(1.5, size=(num_layers - 1, g, g)) * 100)
    sizes = np.stack([rng.permutation(np.resize([1, 3, 2, 4, 5], g)) for _ in range(num_layers)])
    return c, sizes


@pytest.mark.parametrize(("nodes", "gpn"), [(2, 2), (2, 3), (3, 2), (1, 4)])
def test_threshold_bound_is_the_boundary_optimum(nodes: int, gpn: int) -> None:
    b = _two_level(nodes, gpn)
    node, hi, lo = mb.two_level(b)
    assert (hi, lo) == (900.0, 100.0 if nodes > 1 else 900.0)
    for seed in range(4):
        c = np.floor(np.random.default_rng(seed).pareto(1.2, size=(1, nodes * gpn, nodes * gpn)) * 50)
        opt = _boundary_optimum(c[0], b)
        tb = mb.threshold_bound(c, node, hi, lo)[0]
        assert tb == pytest.approx(opt)  # exact for one boundary alone (never above: a valid bound)
        assert mb.sorted_bound(c, b)[0] <= opt + 1e-9
        assert s2.lower_bounds(c, b)[0] <= opt + 1e-9


def test_sorted_bound_holds_for_any_bandwidth() -> None:
    rng = np.random.default_rng(7)
    b = rng.uniform(50, 900, size=(4, 4))
    np.fill_diagonal(b, 0.0)
    assert mb.two_level(b) is None
    for seed in range(4):
        c = np.floor(np.random.default_rng(seed).pareto(1.2, size=(1, 4, 4)) * 50)
        assert mb.tight_bounds(c, b)[0] <= _boundary_optimum(c[0], b) + 1e-9


def test_packing_decides_exactly() -> None:
    assert mb.packable([(2, 1), (1, 2)], num_nodes=1, cap=3)
    assert not mb.packable([(2, 2), (2, 2), (2, 2)], num_nodes=2, cap=3)
    assert mb.packable([(3, 1), (1, 3), (2, 2), (2, 2)], num_nodes=2, cap=4)


@pytest.mark.parametrize(("b", "seed"), [(_two_level(2, 2), 0), (_two_level(1, 4), 1), (_two_level(1, 3), 2)])
def test_chain_search_reaches_the_brute_force_optimum(b: np.ndarray, seed: int) -> None:
    g = b.shape[0]
    num_layers = 4 if g == 4 else 5
    c, sizes = _toy(num_layers, g, seed)
    window = s2.memory_target(sizes)
    res = mc.solve_chain(c, sizes, b, window, Deadline.after(30))
    opt = _brute(c, sizes, b, window)
    assert res.exact and res.mapping is not None
    assert res.objective == pytest.approx(opt) and res.bound == pytest.approx(opt)
    assert s2.memory_violation(res.mapping, sizes, relaxed=False) == 0
    perms = mc.permutations(g)
    t, madd = mc.transition_costs(c, b, perms), mc.memory_adds(sizes, perms)
    lag = mc.lagrangian(t, madd, *window, mc.canonical_starts(perms, b), np.inf)[0]
    assert lag <= opt + 1e-6


def test_chain_search_truncated_still_reports_a_valid_bound() -> None:
    b = _two_level(2, 2)
    c, sizes = _toy(4, 4, 3)
    window = s2.memory_target(sizes)
    res = mc.solve_chain(c, sizes, b, window, Deadline.after(30), max_states=1)
    opt = _brute(c, sizes, b, window)
    assert res.bound <= opt + 1e-6
    if res.mapping is not None:
        assert res.objective >= opt - 1e-6


def test_node_canonical_keeps_cost_and_memory() -> None:
    b = _two_level(2, 3)
    c, sizes = _toy(3, 6, 4)
    rng = np.random.default_rng(5)
    mapping = np.stack([rng.permutation(6) for _ in range(3)])
    node = mb.two_level(b)[0]
    canon = s2.node_canonical(mapping, node)
    assert s2.boundary_costs(canon, c, b).sum() == pytest.approx(s2.boundary_costs(mapping, c, b).sum())
    assert sorted(s2.memory_per_gpu(canon, sizes)) == sorted(s2.memory_per_gpu(mapping, sizes))
    on = np.argsort(canon[0])  # cluster on each GPU, layer 0
    assert (np.diff(on[:3]) > 0).all() and (np.diff(on[3:]) > 0).all() and on[0] < on[3]


def test_joint_ilp_with_node_symmetry_breaking_keeps_an_optimum() -> None:
    b = _two_level(2, 2)
    c, sizes = _toy(3, 4, 6)
    opts = milp.SolverOptions(gap=0.0)
    opt = _brute(c, sizes, b, s2.memory_target(sizes))
    best = mc.solve_chain(c, sizes, b, s2.memory_target(sizes), Deadline.after(30)).mapping
    warm = np.array([3, 2, 1, 0])[best]  # an optimum relabelled off the canonical form
    assert not np.array_equal(s2.node_canonical(warm, mb.two_level(b)[0]), warm)
    for tight, start in ((False, None), (True, None), (True, warm)):
        problem = s2.Stage2Problem(c, sizes, b, opts, tight)
        mapping, res = s2.joint_ilp(problem, Deadline.after(30), False, start)
        assert res.status == milp.OPTIMAL
        assert s2.boundary_costs(mapping, c, b).sum() == pytest.approx(opt)


@pytest.mark.parametrize("b", [_two_level(2, 2), _two_level(1, 4)])
def test_stage2_tight_result_is_within_its_reported_gap(b: np.ndarray) -> None:
    c, sizes = _toy(4, 4, 8)
    problem = s2.Stage2Problem(c, sizes, b, milp.SolverOptions(gap=0.025), True)
    res = s2.solve(problem, "ilp", Deadline.after(20), 20000, 0)
    rep = res.report
    opt = _brute(c, sizes, b, s2.memory_target(sizes))
    assert rep["method"] == "chain" and rep["status"] == milp.OPTIMAL
    assert rep["bound"] <= opt + 1e-6 <= rep["objective"] + 2e-6
    assert rep["objective"] * (1 - rep["gap"]) <= opt + 1e-6


def test_stage2_bound_option_is_checked() -> None:
    assert MoETuner(stage2_bound="tight").stage2_bound == "tight"
    with pytest.raises(ConfigError, match="stage2_bound"):
        MoETuner(stage2_bound="node")


@pytest.mark.parametrize("equal", [False, True])
def test_stage1_enumeration_is_the_brute_force_optimum(equal: bool) -> None:
    for seed in range(3):
        load = np.random.default_rng(seed).integers(1, 500, size=6).astype(float)
        best = min(
            s1.imbalance(load, np.array(lab), 3)
            for lab in itertools.product(range(3), repeat=6)
            if (np.bincount(lab, minlength=3) >= 1).all()
            and (not equal or (np.bincount(lab, minlength=3) == 2).all())
        )
        res = s1.solve_layer(
            load, 3, equal, milp.SolverOptions(gap=0.0), Deadline.after(10), enumerate_max=3**6
        )
        cnt = np.bincount(res.cluster_of, minlength=3)
        assert (cnt >= 1).all() and (not equal or (cnt == 2).all())
        assert res.report["objective"] == pytest.approx(best) == res.report["bound"]
        assert res.report["status"] == milp.OPTIMAL


def test_stage1_enumerate_option_is_checked() -> None:
    with pytest.raises(ConfigError, match="stage1_enumerate"):
        MoETuner(stage1_enumerate=-1)


def test_bottleneck_threshold_is_the_best_matchings_largest_cost() -> None:
    rng = np.random.default_rng(9)
    for _ in range(3):
        cost = rng.integers(0, 20, size=(5, 5)).astype(float)
        brute = min(cost[np.arange(5), list(p)].max() for p in itertools.permutations(range(5)))
        assert bn.bottleneck_threshold(cost) == brute


@pytest.mark.parametrize(("slack", "tie"), [(0.0, "product"), (0.0, "square"), (0.2, "square")])
def test_bottleneck_chain_places_each_layer_within_its_slack(slack: float, tie: str) -> None:
    b = _two_level(2, 2)
    c, sizes = _toy(5, 4, 10)
    mapping = bn.bottleneck_chain(c, sizes, b, slack, tie)
    perms = mc.permutations(4)
    t = mc.transition_costs(c, b, perms)
    index = {tuple(p): i for i, p in enumerate(perms.tolist())}
    costs = s2.boundary_costs(mapping, c, b)
    for li in range(4):
        least = t[li, index[tuple(mapping[li].tolist())]].min()
        assert least - 1e-9 <= costs[li] <= (1 + slack) * least + 1e-9
        if slack == 0:
            assert costs[li] == pytest.approx(least)
    with pytest.raises(ValueError, match="tie"):
        bn.bottleneck_chain(c, sizes, b, 0.0, "cube")


def test_best_start_is_no_worse_than_the_first_start() -> None:
    b = _two_level(2, 3)
    c, sizes = _toy(6, 6, 12)
    window = s2.memory_target(sizes)
    first = bn.repair_memory_costed(bn.bottleneck_chain(c, sizes, b), c, sizes, b, window, Deadline.after(20))

    def key(m: np.ndarray) -> tuple[int, float]:
        return s2.memory_violation(m, sizes, False), float(s2.boundary_costs(m, c, b).sum())

    best = bn.best_start(c, sizes, b, window, Deadline.after(20), key)

    (v_best, c_best), (v_first, c_first) = key(best), key(first)
    assert v_best < v_first or (v_best == v_first and c_best <= c_first + 1e-9)


def test_costed_repair_keeps_permutations_and_swap_costs_are_exact() -> None:
    b = _two_level(2, 3)
    c, sizes = _toy(6, 6, 11)
    start = bn.bottleneck_chain(c, sizes, b)
    inv_b = bn._inverse_bandwidth(b)
    for li, a, z in [(0, 1, 4), (3, 0, 5), (5, 2, 3)]:
        moved = start.copy()
        ca, cz = np.flatnonzero(start[li] == a)[0], np.flatnonzero(start[li] == z)[0]
        moved[li, ca], moved[li, cz] = z, a
        change = s2.boundary_costs(moved, c, b).sum() - s2.boundary_costs(start, c, b).sum()
        assert bn._swap_costs(start, c, inv_b, li)[a, z] == pytest.approx(change)
    window = s2.memory_target(sizes)
    fixed = bn.repair_memory_costed(start, c, sizes, b, window, Deadline.after(20))
    assert all(sorted(row) == list(range(6)) for row in fixed.tolist())
    assert s2.memory_violation(fixed, sizes, False) <= s2.memory_violation(start, sizes, False)
