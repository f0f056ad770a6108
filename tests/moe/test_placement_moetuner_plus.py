"""MoETuner+: starts from the best candidate on the profile, never ends slower on it, needs the profile trace."""

from __future__ import annotations

import numpy as np
import pytest

from common.errors import InputError
from moe.cost_model import EvalOptions, LayerModel, evaluate_placement
from moe.placement.eplb import eplb
from moe.placement.moetuner_plus import MoETunerPlus, candidate_moves
from moe.placement.placer import PlacementProblem
from moe.placement.profiled import ProfiledProblem
from moe.stats import cross_layer_counts, expert_load
from moe.synthetic import generate_trace
from moe.topology import Compute, Topology

TOPO = Topology(
    name="t",
    num_nodes=2,
    gpus_per_node=4,
    intra_node_gbps=450,
    inter_node_gbps=50,
    gpu_port_gbps=450,
    nic_gbps=50,
    hidden_size=2048,
    compute=Compute(time_per_token_s=5e-8),
)


@pytest.fixture(scope="module")
def trace():
    t = generate_trace("deepseek_v2_lite", 4000, skew=1.0, affinity=0.9, seed=5)
    return t.experts[:, :5].astype(np.int64), t.num_experts


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
    p = MoETunerPlus(replicas=8, time_limit_s=6, sweeps=1).place(problem)
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
