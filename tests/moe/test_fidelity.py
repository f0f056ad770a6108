"""Conclusions that hold on any trace: slot order is data, links are shared, the bound is never beaten."""

from __future__ import annotations

import numpy as np
import pytest

from common.errors import ConfigError, InputError
from moe.bound import fraction_of_bound, layer_time_lower_bound, max_slots
from moe.cost_model import EvalOptions, evaluate_placement, majority_gpu
from moe.placement.base import Placement
from moe.placement.eplb import eplb
from moe.placement.greedy import greedy
from moe.placement.simple import contiguous
from moe.stats import expert_load
from moe.synthetic import generate_trace
from moe.topology import Compute, Topology
from moe.trace import Trace, save_trace
from moe.trace_source import FileTrace, SyntheticTrace
from tests.conftest import REAL_TRACE, needs_real_trace


def small_topology(link_model: str = "shared", nodes: int = 2, per_node: int = 4) -> Topology:
    return Topology(
        name="t",
        num_nodes=nodes,
        gpus_per_node=per_node,
        intra_node_gbps=450,
        inter_node_gbps=50,
        gpu_port_gbps=450,
        nic_gbps=50,
        link_model=link_model,
        hidden_size=2048,
        compute=Compute(time_per_token_s=2e-8),
    )


def _placements(load: np.ndarray, g: int) -> list[Placement]:
    num_layers, e = load.shape
    return [contiguous(num_layers, e, g), greedy(load, g), eplb(load, g, 4, num_redundant=g)]


@pytest.mark.parametrize("movement", ["follow", "home"])
def test_permuting_the_slots_of_an_unordered_trace_changes_no_metric(movement):
    trace = generate_trace("deepseek_v2_lite", 3000, skew=1.0, affinity=0.8, seed=3)
    ex = trace.experts.astype(np.int64)
    rng = np.random.default_rng(0)
    perm = np.argsort(rng.random(ex.shape), axis=2)
    shuffled = np.take_along_axis(ex, perm, axis=2)
    topo = small_topology()
    opts = EvalOptions(batch_tokens=500, token_movement=movement)
    for p in _placements(expert_load(ex, trace.num_experts), topo.num_gpus):
        a = evaluate_placement(ex, p, topo, opts, slot_order="unordered").summary()
        b = evaluate_placement(shuffled, p, topo, opts, slot_order="unordered").summary()
        assert a == b, p.name
    # with score order, slot 0 matters under follow (and only there)
    a = evaluate_placement(ex, p, topo, opts, slot_order="score").summary()
    b = evaluate_placement(shuffled, p, topo, opts, slot_order="score").summary()
    assert (a == b) == (movement == "home")


def test_majority_ties_are_broken_by_the_token_not_by_gpu_id():
    # every token has two copies on GPU 0 and two on GPU 3: a tie
    dest = np.array([[0], [3], [0], [3]]).repeat(4000, axis=1)
    tok = np.arange(4000)
    nxt = majority_gpu(dest, tok, 4)
    assert set(np.unique(nxt)) == {0, 3}
    assert 0.45 < (nxt == 0).mean() < 0.55
    np.testing.assert_array_equal(nxt, majority_gpu(dest[::-1], tok, 4))  # slot order is irrelevant
    clear = np.array([[1], [1], [2]]).repeat(10, axis=1)
    assert (majority_gpu(clear, np.arange(10), 4) == 1).all()  # most copies wins


def _sorted_trace(tmp_path, slot_order):
    trace = generate_trace("deepseek_v2_lite", 2000, seed=1)
    ex = np.sort(trace.experts, axis=2)  # slots sorted by id, as in the shared DeepSeek trace
    path = tmp_path / "t.npz"
    save_trace(Trace(ex, trace.num_experts, prompt_offsets=trace.prompt_offsets, slot_order=slot_order), path)
    return path


def test_the_loader_refuses_score_order_when_slots_look_id_sorted(tmp_path):
    path = _sorted_trace(tmp_path, None)
    with pytest.raises(ConfigError, match=r"trace\.slot_order=score .*unordered"):
        FileTrace(path=str(path)).load(0)  # the file does not say, nor does the config
    with pytest.raises(InputError, match=r"look sorted by id.*set trace\.slot_order=unordered"):
        FileTrace(path=str(path), slot_order="score").load(0)
    assert FileTrace(path=str(path), slot_order="unordered").load(0).slot_order == "unordered"
    declared = _sorted_trace(tmp_path, "unordered")
    assert FileTrace(path=str(declared)).load(0).slot_order == "unordered"  # the file's own declaration


def test_synthetic_traces_are_score_ordered_and_split_by_the_run_seed():
    src = SyntheticTrace(tokens=4000, preset="deepseek_v2_lite")
    assert src.load(0).slot_order == "score"
    p0, _ = src.profile_and_evaluation(0)
    p1, _ = src.profile_and_evaluation(1)
    assert p0.num_tokens != p1.num_tokens or not np.array_equal(p0.experts, p1.experts)
    fixed = SyntheticTrace(tokens=4000, preset="deepseek_v2_lite", split_seed=5, seed=2)
    np.testing.assert_array_equal(
        fixed.profile_and_evaluation(0)[0].experts, fixed.profile_and_evaluation(1)[0].experts
    )


@needs_real_trace
def test_the_shared_deepseek_trace_is_refused_as_score_order():
    with pytest.raises(InputError, match="trace.slot_order=unordered"):
        FileTrace(path=str(REAL_TRACE), slot_order="score", max_tokens=1000).load(0)


def test_a_rank_sending_to_all_peers_shares_its_switch_port():
    # one node of 8 ranks; every token starts on rank 0 (batch of 1, round robin) and goes to rank 1..7
    p = Placement.from_expert_to_gpu(np.arange(8)[None, :], 8)
    opts = EvalOptions(batch_tokens=80, first_layer_start="round_robin", token_movement="home")
    one = np.zeros((80, 1, 7), dtype=np.int64)
    one[:, 0, :] = np.arange(1, 8)
    shared = evaluate_placement(one, p, small_topology("shared", 1, 8), opts)
    pairwise = evaluate_placement(one, p, small_topology("pairwise", 1, 8), opts)
    # 80 tokens, 10 start on each rank and send to the 7 others (one of them local for ranks 1..7)
    s, q = shared.batch_dispatch_tail_s[0, 0], pairwise.batch_dispatch_tail_s[0, 0]
    bpt = 2048 * 2
    assert q == pytest.approx(10 * bpt / 450e9)  # a private 450 GB/s link per pair
    assert s == pytest.approx(70 * bpt / 450e9)  # rank 0 pushes 70 transfers through one port


def test_the_bound_holds_for_every_placement_and_is_reached_when_nothing_moves():
    trace = generate_trace("deepseek_v2_lite", 4000, skew=1.0, seed=4)
    ex = trace.experts.astype(np.int64)
    topo = small_topology()
    opts = EvalOptions(batch_tokens=1000)
    for p in _placements(expert_load(ex, trace.num_experts), topo.num_gpus):
        r = evaluate_placement(ex, p, topo, opts)
        f = fraction_of_bound(r, trace.top_k, topo, max_slots(p))
        assert 0 < f["fraction_of_bound"] <= 1.0, p.name
    # top-1, each token's expert on its starting GPU, perfectly balanced, tokens stay home: bound reached
    g = topo.num_gpus
    home = (np.arange(800) * g // 800).reshape(800, 1, 1)
    p = Placement.from_expert_to_gpu(np.arange(g)[None, :], g)
    r = evaluate_placement(home, p, topo, EvalOptions(batch_tokens=800, token_movement="home"))
    assert fraction_of_bound(r, 1, topo, 1)["fraction_of_bound"] == pytest.approx(1.0)


def test_the_communication_bound_bites_when_a_token_needs_more_gpus_than_one():
    topo = small_topology()
    b = layer_time_lower_bound(1000, 6, topo, slots_per_gpu=2)
    assert b.dispatch_s > 0 and b.dispatch_s == b.combine_s  # 6 experts on >= 3 GPUs: >= 2 leave
    assert layer_time_lower_bound(1000, 6, topo, slots_per_gpu=8).dispatch_s == 0.0
