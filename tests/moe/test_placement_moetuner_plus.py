"""MoETuner+: starts from the best candidate on the profile, never ends slower on it, needs the profile trace."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from common.errors import ConfigError, InputError
from moe.cost_model import EvalOptions, evaluate_placement
from moe.layer_model import LayerModel
from moe.placement.cluster_moves import group_exchanges, kl_sequence, node_affinity, same_layer_counts
from moe.placement.deadline import Deadline
from moe.placement.eplb import eplb
from moe.placement.moetuner_plus import MoETunerPlus, _candidates, candidate_moves, cluster_search
from moe.placement.placer import PlacementProblem
from moe.placement.profiled import ProfiledProblem
from moe.placement.replicas import add_hot_replicas
from moe.stats import cross_layer_counts, expert_load
from tests.moe.search_case import TOPO, search_case


@pytest.mark.parametrize("rule", [("follow", "even"), ("follow", "local"), ("home", "even")])
def test_layer_model_adds_up_to_the_cost_model(trace, rule):
    ex, e = trace
    opts = EvalOptions(batch_tokens=1000, token_movement=rule[0], replica_choice=rule[1])
    p = eplb(expert_load(ex, e), 8, 4, num_redundant=8)
    model = LayerModel(ex, TOPO, opts, "unordered", e)
    times, _ = model.forward(p.assignment)
    report = evaluate_placement(ex, p, TOPO, opts)
    np.testing.assert_allclose(times, report.batch_layer_tail_s.sum(axis=0), rtol=1e-12)


def test_moves_keep_every_gpus_slot_count(trace):
    ex, e = trace
    load = expert_load(ex, e)
    p = eplb(load, 8, 4, num_redundant=8)
    for cand in candidate_moves(p.assignment[0], load[0], np.random.default_rng(0), 6):
        assert [len(g) for g in cand] == [len(g) for g in p.assignment[0]]
        assert set().union(*map(set, cand)) == set(range(e))  # every expert keeps a copy


def test_moetuner_plus_never_ends_slower_than_its_start_on_the_profile(trace):
    ex, e = trace
    opts = EvalOptions(batch_tokens=1000)
    problem = ProfiledProblem(
        expert_load(ex, e), cross_layer_counts(ex, e), TOPO.bandwidth_gbps(), 4, 0,
        experts=ex, topology=TOPO, options=opts, slot_order="unordered",
    )  # fmt: skip
    # The local search alone (the cluster moves and the node balancing have their own tests): with them on, a
    # busy machine can spend the whole search budget before the local search tries a move.
    p = MoETunerPlus(replicas=8, time_limit_s=6, sweeps=1, cross_node_sweeps=0, node_balance_sweeps=0).place(
        problem
    )
    info = p.info
    assert p.name == "moetuner_plus" and p.has_replicas
    assert (p.experts_per_gpu() <= 9).all()  # at most E / G + one replica slot per GPU
    assert info["start"] in info["start_profile_times_s"]
    assert info["search"]["profile_time_after_s"] <= min(info["start_profile_times_s"].values())
    assert info["search"]["moves_tried"] > 0
    with pytest.raises(InputError, match="ProfiledProblem"):
        MoETunerPlus().place(PlacementProblem(problem.load, problem.pairs, problem.bandwidth, 4))


def test_gpu_load_figure_is_written(tmp_path):
    from moe.placement_plots import plot_gpu_loads

    rng = np.random.default_rng(0)
    out = plot_gpu_loads(rng.integers(1, 100, (6, 4)), rng.integers(40, 60, (6, 4)), tmp_path / "l.png", "t")
    assert out.read_bytes()[:4] == b"\x89PNG"


def _cross_pairs(layers, li, pairs, q, node_of):
    """Co-routed pairs of layer ``li``'s experts that sit on different nodes (no replicas): with the previous
    and next layer, and within the layer."""
    e = q.shape[0]
    node = [np.empty(e, dtype=np.int64) for _ in layers]
    for lj, layer in enumerate(layers):
        for g, gpu in enumerate(layer):
            node[lj][gpu] = node_of[g]
    total = 0.5 * float((q * (node[li][:, None] != node[li][None, :])).sum())
    if li > 0:
        total += float((pairs[li - 1] * (node[li - 1][:, None] != node[li][None, :])).sum())
    if li + 1 < len(layers):
        total += float((pairs[li] * (node[li][:, None] != node[li + 1][None, :])).sum())
    return total


def test_kl_gain_is_the_drop_in_cross_node_pairs(trace):
    ex, e = trace
    pairs, load = cross_layer_counts(ex, e), expert_load(ex, e).astype(float)
    q = same_layer_counts(ex, e)
    node_of = TOPO.node_of()
    layers = [[list(range(g * 8, g * 8 + 8)) for g in range(8)] for _ in range(ex.shape[1])]
    found = 0
    for li in range(ex.shape[1]):
        aff = node_affinity(layers, li, pairs, e, node_of)
        res = kl_sequence(layers[li], 0, 5, aff, q[li], load[li], node_of, steps=8)
        if res is None:
            continue
        found += 1
        new = [*layers[:li], res[0], *layers[li + 1 :]]
        drop = _cross_pairs(layers, li, pairs, q[li], node_of) - _cross_pairs(new, li, pairs, q[li], node_of)
        assert res[1] > 0 and drop == pytest.approx(res[1], rel=1e-9)
        gpu_load = [load[li][gpu].sum() for gpu in res[0]]
        assert max(gpu_load) <= max(load[li][gpu].sum() for gpu in layers[li]) + 1e-9
    assert found > 0


def test_group_exchanges_move_whole_groups_across_nodes():
    layer = [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [10, 11], [12, 13], [14, 15]]
    node_of = TOPO.node_of()
    props = group_exchanges(layer, node_of)
    assert len(props) == 16 + 1  # 4 x 4 cross-node GPU pairs, one node exchange
    for cand in props:
        assert sorted(map(tuple, cand)) == sorted(map(tuple, layer))
        moved = [g for g in range(8) if cand[g] != layer[g]]
        assert all(node_of[layer.index(cand[g])] != node_of[g] for g in moved)


def test_cluster_moves_never_end_slower_and_keep_the_slots(trace):
    case = search_case(*trace)
    problem, start, model = case.problem, case.start, case.model
    out, rep = cluster_search(
        model, problem, start, sweeps=1, kl_steps=6, deadline=Deadline.after(60), top=32
    )
    assert rep["moves_tried"] > 0 and rep["moves_kept"] > 0
    assert rep["profile_time_after_s"] < rep["profile_time_before_s"]
    assert rep["profile_time_after_s"] == pytest.approx(
        float(model.forward(out.assignment)[0].sum()), rel=1e-12
    )
    assert (out.experts_per_gpu() == start.experts_per_gpu()).all()
    assert (out.replica_counts() >= 1).all()


@pytest.mark.slow  # about 15 s: three candidates, cluster moves and the search
def test_moetuner_plus_with_cross_node_moves_starts_from_the_best_candidate(trace):
    ex, e = trace
    problem = ProfiledProblem.from_trace(ex, e, TOPO, EvalOptions(batch_tokens=1000), "unordered", 0)
    assert MoETunerPlus().cross_node_sweeps == 1  # on by default
    p = MoETunerPlus(replicas=8, time_limit_s=20, sweeps=1, cross_node_sweeps=1).place(problem)
    info = p.info["search"]
    assert "exflow+node_replicas" in p.info["start_profile_times_s"]  # two nodes: the node-local candidate
    assert info["cross_node"]["profile_time_before_s"] == min(p.info["start_profile_times_s"].values())
    assert info["profile_time_after_s"] <= info["cross_node"]["profile_time_after_s"]
    assert info["cross_node"]["profile_time_after_s"] <= info["cross_node"]["profile_time_before_s"]
    with pytest.raises(ConfigError, match="cross_node_sweeps"):
        MoETunerPlus(cross_node_sweeps=-1)


def test_node_local_replicas_stay_on_the_hot_gpus_node():
    # GPU loads 11, 6, 2, 2 (nodes 0, 0, 1, 1); GPU 0 is the hottest, expert 0 (load 10) its hottest expert.
    layer = [[0, 1], [2, 3], [4, 5], [6, 7]]
    load = np.array([[10.0, 1, 5, 1, 1, 1, 1, 1]])
    free, _ = add_hot_replicas([layer], load, budget=1)
    assert free[0][2] == [4, 5, 0]  # the least loaded GPU, on the other node: max load 11 -> 7
    local, added = add_hot_replicas([layer], load, budget=1, node_of=np.array([0, 0, 1, 1]))
    # Node 0 only: a copy of expert 0 on GPU 1 gives 6 | 11 (no gain), so expert 1's: 10.5 | 6.5.
    assert local[0] == [[0, 1], [2, 3, 1], [4, 5], [6, 7]] and added.tolist() == [1]


def test_node_local_candidate_only_across_nodes(trace):
    ex, e = trace
    one_node = dataclasses.replace(TOPO, name="one", num_nodes=1, gpus_per_node=8, ep_ranks=None)
    opts = MoETunerPlus(replicas=8, time_limit_s=2)
    for topo, expected in ((TOPO, True), (one_node, False)):
        problem = ProfiledProblem.from_trace(ex, e, topo, EvalOptions(batch_tokens=1000), "unordered", 0)
        starts = _candidates(problem, opts, Deadline.after(2))
        assert ("exflow+node_replicas" in starts) is expected
        if expected:
            node_of = topo.node_of()
            plain = starts["exflow+replicas"].assignment
            for layer, base in zip(starts["exflow+node_replicas"].assignment, plain, strict=True):
                for g, gpu in enumerate(layer):
                    for x in set(gpu) - set(base[g]):  # an added copy: some GPU of its node held it before
                        assert any(x in base[h] for h in np.flatnonzero(node_of == node_of[g]))
