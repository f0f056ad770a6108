"""Cost model: hand-checked numbers on a 2-GPU toy, the replica and dedupe rules, affinity, real-trace sums."""

from __future__ import annotations

import numpy as np
import pytest

from common.errors import ConfigError, InputError
from moe.cost_model import EvalOptions, eval_options_from_config, evaluate_placement, route_table
from moe.placement.base import Placement
from moe.topology import Compute, Topology
from tests.conftest import real_trace_head


def toy_topology(num_nodes: int = 1, per_node: int = 2, nic_gbps: float | None = None) -> Topology:
    """1 GB/s links in a node, 0.5 GB/s across, 1000-byte tokens: 1 us per token on a node link."""
    return Topology(
        name="toy",
        num_nodes=num_nodes,
        gpus_per_node=per_node,
        ep_ranks=num_nodes * per_node,
        intra_node_gbps=1.0,
        inter_node_gbps=0.5,
        hidden_size=500,
        dtype_bytes=2.0,
        compute=Compute(time_per_token_s=2e-6),
        nic_gbps=nic_gbps,
    )


# Two layers, two experts (expert e on GPU e), top-1, four tokens, one batch.
TOY = np.array([[[0], [1]], [[1], [0]], [[1], [0]], [[1], [1]]], dtype=np.int64)  # [4, 2, 1]
TOY_PLACEMENT = Placement.from_expert_to_gpu(np.array([[0, 1], [0, 1]]), 2, name="toy")


def test_toy_follow_matches_hand_computation():
    # uniform start: tokens 0,1 on GPU 0; tokens 2,3 on GPU 1.
    r = evaluate_placement(TOY, TOY_PLACEMENT, toy_topology(), EvalOptions(batch_tokens=4))
    # layer 0: dest [0,1,1,1]; layer 1 starts from there (follow) and goes to [1,0,0,1].
    np.testing.assert_array_equal(r.tokens_per_gpu, [[1, 3], [2, 2]])
    np.testing.assert_allclose(r.balancedness, [2 / 3, 1.0])
    np.testing.assert_array_equal(r.dispatch[0], [[1, 1], [0, 2]])
    np.testing.assert_array_equal(r.dispatch[1], [[0, 1], [2, 1]])
    np.testing.assert_array_equal(r.combine[0], [[1, 0], [0, 3]])  # follow: results stay where computed
    np.testing.assert_array_equal(r.combine[1], [[2, 0], [0, 2]])
    np.testing.assert_allclose(r.link_bytes[1], [[0, 1000], [2000, 0]])
    np.testing.assert_allclose(r.batch_token_tail_s, [[6e-6, 4e-6]])  # 3 and 2 copies x 2 us
    np.testing.assert_allclose(r.batch_dispatch_tail_s, [[1e-6, 2e-6]])  # 1 and 2 tokens on the slowest link
    np.testing.assert_allclose(r.batch_combine_tail_s, [[0.0, 0.0]])
    # token mean of compute: layer 0 tokens finish at 2,6,6,6 us; layer 1 all at 4 us.
    np.testing.assert_allclose(r.batch_token_mean_s, [[5e-6, 4e-6]])
    # a2a mean: layer 0 only token 1 moves (1 us); layer 1 tokens 0 (1 us), 1 and 2 (2 us each).
    np.testing.assert_allclose(r.batch_a2a_mean_s, [[0.25e-6, 1.25e-6]])
    m = r.summary()
    assert m["layer_time_tail_s"] == pytest.approx(7e-6 + 6e-6)
    assert m["token_time_tail_s"] == pytest.approx(10e-6)
    assert m["a2a_time_tail_s"] == pytest.approx(3e-6)
    assert m["cross_gpu_tokens"] == 4  # 1 + 3 dispatches, no combine traffic
    assert m["cross_gpu_fraction"] == pytest.approx(4 / 8)
    assert m["balancedness_mean"] == pytest.approx((2 / 3 + 1) / 2)
    assert m["cross_node_tokens"] == 0


def test_toy_home_combines_back_to_the_source():
    r = evaluate_placement(
        TOY, TOY_PLACEMENT, toy_topology(), EvalOptions(batch_tokens=4, token_movement="home")
    )
    # layer 1 starts again from [0,0,1,1] and goes to [1,0,0,1].
    np.testing.assert_array_equal(r.dispatch[1], [[1, 1], [1, 1]])
    for li in range(2):
        np.testing.assert_array_equal(r.combine[li], r.dispatch[li].T)
    np.testing.assert_allclose(r.batch_combine_tail_s, [[1e-6, 1e-6]])
    assert r.summary()["cross_gpu_tokens"] == (1 + 2) + (1 + 2)  # dispatch (layers 0, 1) + combine


def test_round_robin_start_and_batches():
    opts = EvalOptions(batch_tokens=2, first_layer_start="round_robin")
    r = evaluate_placement(TOY, TOY_PLACEMENT, toy_topology(), opts)
    assert r.num_batches == 2 and r.num_tokens == 4
    # batch 0 = tokens 0,1 on GPUs 0,1 -> layer 0 dest 0,1: all local.
    assert r.batch_dispatch_tail_s[0, 0] == 0.0
    # batch 1 = tokens 2,3 on GPUs 0,1 -> dest 1,1: token 2 crosses.
    assert r.batch_dispatch_tail_s[1, 0] == pytest.approx(1e-6)
    m = r.summary()
    assert m["layer_time_tail_p50_s"] == pytest.approx(np.percentile(r.batch_layer_tail_s.sum(1), 50))
    # leftover tokens past the last full batch are not evaluated
    r3 = evaluate_placement(TOY, TOY_PLACEMENT, toy_topology(), EvalOptions(batch_tokens=3))
    assert r3.num_tokens == 3 and r3.info["tokens_dropped"] == 1


def test_top2_dispatch_is_deduplicated_per_destination_gpu():
    # experts 0,1 on GPU 1; expert 2 on GPU 0; one token on GPU 0 picks 0 and 1 (same GPU), then 2 and 0.
    experts = np.array([[[0, 1], [2, 0]]])
    p = Placement.from_expert_to_gpu(np.array([[1, 1, 0], [1, 1, 0]]), 2)
    once = evaluate_placement(experts, p, toy_topology(), EvalOptions(batch_tokens=1))
    per_copy = evaluate_placement(
        experts, p, toy_topology(), EvalOptions(batch_tokens=1, dedupe_dispatch=False)
    )
    assert once.dispatch[0, 0, 1] == 1 and per_copy.dispatch[0, 0, 1] == 2
    assert once.tokens_per_gpu[0].tolist() == [0, 2] == per_copy.tokens_per_gpu[0].tolist()
    # follow: after layer 0 the token is on GPU 1 (its top-1 expert 0); layer 1 experts 2 (GPU 0) and 0 (GPU 1)
    np.testing.assert_array_equal(once.dispatch[1], [[0, 0], [1, 1]])
    # layer 1: the token moves to GPU 0 (top-1 = expert 2); the partial result from GPU 1 is combined there.
    np.testing.assert_array_equal(once.combine[1], [[1, 0], [1, 0]])


def test_replicas_prefer_own_gpu_then_node_then_split_evenly():
    topo = toy_topology(num_nodes=2, per_node=2)  # GPUs 0,1 on node 0; 2,3 on node 1
    # layer 0: expert 0 on GPUs 1 and 3, expert 1 on GPUs 0 and 2
    p = Placement([[[1], [0], [1], [0]]], num_experts=2, name="rep")
    table = route_table(p, topo.node_of())
    # a token on GPU 0 wanting expert 0: no local copy, the node-0 copy is GPU 1
    assert table.count[0, 0, 0] == 1 and table.choice[0, 0, 0, 0] == 1
    assert table.count[0, 1, 0] == 1 and table.choice[0, 1, 0, 0] == 1  # own GPU
    assert table.choice[0, 2, 0, 0] == 3
    # a 3-replica expert seen from a node with no copy: split evenly over all three
    p3 = Placement([[[0, 1], [0], [0], [1]]], num_experts=2)
    t3 = route_table(p3, np.array([0, 1, 1, 2]))
    assert t3.count[0, 3, 0] == 3 and sorted(t3.choice[0, 3, 0]) == [0, 1, 2]
    experts = np.zeros((300, 1, 1), dtype=np.int64)
    opts = EvalOptions(batch_tokens=300, replica_choice="local")
    r = evaluate_placement(experts, p3, toy_topology(num_nodes=4, per_node=1), opts)
    # uniform start: 75 tokens per GPU; GPUs 0,1,2 hold expert 0 (local); GPU 3's 75 are split 25/25/25
    np.testing.assert_array_equal(r.tokens_per_gpu[0], [100, 100, 100, 0])


def test_even_replica_choice_keeps_the_planned_split_when_tokens_crowd_one_gpu():
    # expert 0 on GPUs 0 and 1; every token starts on GPU 0 (round_robin start with one token per batch)
    p = Placement([[[0], [0, 1]]], num_experts=2)
    experts = np.zeros((400, 1, 1), dtype=np.int64)
    topo = toy_topology(num_nodes=1, per_node=2)
    local = evaluate_placement(experts, p, topo, EvalOptions(batch_tokens=1, replica_choice="local"))
    even = evaluate_placement(experts, p, topo, EvalOptions(batch_tokens=1, replica_choice="even"))
    np.testing.assert_array_equal(local.tokens_per_gpu[0], [400, 0])  # all stay on their own GPU's copy
    np.testing.assert_array_equal(even.tokens_per_gpu[0], [200, 200])  # split as a balancer plans
    with pytest.raises(ConfigError, match="replica_choice"):
        EvalOptions(replica_choice="nearest")


def test_nic_model_slows_cross_node_transfers():
    experts = np.array([[[1]], [[1]]])  # two tokens, one layer; expert 1 on GPU 1 (node 1)
    p = Placement.from_expert_to_gpu(np.array([[0, 1]]), 2)
    opts = EvalOptions(batch_tokens=2, first_layer_start="round_robin")
    plain = evaluate_placement(experts, p, toy_topology(num_nodes=2, per_node=1), opts)
    assert plain.batch_dispatch_tail_s[0, 0] == pytest.approx(1000 / 0.5e9)  # 1 token over a 0.5 GB/s link
    slow_nic = evaluate_placement(experts, p, toy_topology(num_nodes=2, per_node=1, nic_gbps=0.1), opts)
    assert slow_nic.batch_dispatch_tail_s[0, 0] == pytest.approx(1000 / 0.1e9)
    assert plain.summary()["cross_node_tokens"] == 1


def affinity_trace(
    num_tokens: int, num_layers: int, num_experts: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 trace whose layer-(l+1) expert is perm_l(layer-l expert) for 90% of tokens; also the perms."""
    rng = np.random.default_rng(seed)
    perms = np.stack([rng.permutation(num_experts) for _ in range(num_layers - 1)])
    ex = np.empty((num_tokens, num_layers), dtype=np.int64)
    ex[:, 0] = rng.integers(0, num_experts, num_tokens)
    for li in range(1, num_layers):
        follow = perms[li - 1][ex[:, li - 1]]
        ex[:, li] = np.where(rng.random(num_tokens) < 0.9, follow, rng.integers(0, num_experts, num_tokens))
    return ex[:, :, None], perms


def test_placing_affine_experts_together_lowers_cross_gpu_volume():
    e, g, num_layers = 8, 4, 6
    experts, perms = affinity_trace(20_000, num_layers, e, seed=0)
    contiguous = Placement.from_expert_to_gpu(np.tile(np.arange(e) // (e // g), (num_layers, 1)), g)
    # affine: layer 0 contiguous; expert perm(x) of layer l+1 goes where x was in layer l
    gpu_of = np.empty((num_layers, e), dtype=np.int64)
    gpu_of[0] = np.arange(e) // (e // g)
    for li in range(1, num_layers):
        gpu_of[li, perms[li - 1]] = gpu_of[li - 1]
    affine = Placement.from_expert_to_gpu(gpu_of, g)
    topo = toy_topology(per_node=4)
    a = evaluate_placement(experts, affine, topo, EvalOptions(batch_tokens=5000)).summary()
    c = evaluate_placement(experts, contiguous, topo, EvalOptions(batch_tokens=5000)).summary()
    assert a["cross_gpu_tokens"] < 0.5 * c["cross_gpu_tokens"]
    assert a["a2a_time_tail_s"] < c["a2a_time_tail_s"]
    # the same experts per GPU and uniform popularity: load balance is about the same
    assert a["balancedness_mean"] == pytest.approx(c["balancedness_mean"], abs=0.05)


def test_same_inputs_give_identical_numbers():
    experts, _ = affinity_trace(3000, 4, 8, seed=1)
    p = Placement.from_expert_to_gpu(np.tile(np.arange(8) % 4, (4, 1)), 4)
    a = evaluate_placement(experts, p, toy_topology(per_node=4), EvalOptions(batch_tokens=1000))
    b = evaluate_placement(experts, p, toy_topology(per_node=4), EvalOptions(batch_tokens=1000))
    assert a.summary() == b.summary()


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(InputError, match="layers"):
        evaluate_placement(TOY[:, :1], TOY_PLACEMENT, toy_topology())
    with pytest.raises(InputError, match="EP ranks"):
        evaluate_placement(TOY, TOY_PLACEMENT, toy_topology(per_node=4))
    with pytest.raises(InputError, match="expert ids"):
        evaluate_placement(TOY + 5, TOY_PLACEMENT, toy_topology())
    with pytest.raises(InputError, match="integer"):
        evaluate_placement(TOY.astype(float), TOY_PLACEMENT, toy_topology())
    with pytest.raises(ConfigError, match="token_movement"):
        EvalOptions(token_movement="teleport")
    with pytest.raises(ConfigError, match="eval.batch_tokens"):
        eval_options_from_config({"batch_tokens": 0})
    with pytest.raises(ConfigError, match="unknown keys"):
        eval_options_from_config({"batch_size": 10})


def test_real_trace_totals():
    experts, e = real_trace_head(20_000)
    t, num_layers, k = experts.shape
    g = 4
    p = Placement.from_expert_to_gpu(np.tile(np.arange(e) // (e // g), (num_layers, 1)), g, name="contiguous")
    topo = toy_topology(per_node=g)
    r = evaluate_placement(experts, p, topo, EvalOptions(batch_tokens=4096, dedupe_dispatch=False))
    n = r.num_tokens
    assert n == 4 * 4096
    np.testing.assert_array_equal(r.tokens_per_gpu.sum(axis=1), n * k)
    np.testing.assert_array_equal(r.dispatch.sum(axis=(1, 2)), n * k)  # one transfer per copy
    np.testing.assert_array_equal(r.combine.sum(axis=(1, 2)), n * k)
    dd = evaluate_placement(experts, p, topo, EvalOptions(batch_tokens=4096))
    assert (dd.dispatch.sum(axis=(1, 2)) <= n * k).all() and (dd.dispatch.sum(axis=(1, 2)) >= n).all()
    assert ((0 < r.balancedness) & (r.balancedness <= 1)).all()
    m = dd.summary()
    assert m["layer_time_tail_s"] >= m["layer_time_mean_s"] > 0
    assert m["token_time_tail_s"] >= m["token_time_mean_s"]


@pytest.mark.parametrize("movement", ["follow", "follow_score", "home"])
@pytest.mark.parametrize("start", ["uniform", "round_robin"])
@pytest.mark.parametrize("dedupe", [True, False])
@pytest.mark.parametrize("replica_choice", ["even", "local"])
def test_vectorised_counts_equal_the_per_token_reference(movement, start, dedupe, replica_choice):
    slot_order = "score" if movement == "follow_score" else "unordered"
    movement = movement.removesuffix("_score")
    from moe.cost_model_reference import reference_counts

    rng = np.random.default_rng(7)
    e, g, num_layers, k = 6, 4, 3, 3
    experts = np.stack(
        [np.stack([rng.choice(e, k, replace=False) for _ in range(num_layers)]) for _ in range(500)]
    )
    # replicas: every expert once on GPU e % 4, experts 0 and 1 also elsewhere
    assignment = []
    for li in range(num_layers):
        gpus = [[x for x in range(e) if x % g == gi] for gi in range(g)]
        gpus[(li + 1) % g].append(0)
        gpus[(li + 3) % g].append(1)
        gpus[(li + 2) % g].append(1)
        assignment.append([sorted(set(x)) for x in gpus])
    p = Placement(assignment, num_experts=e, name="replicated")
    assert p.has_replicas
    topo = toy_topology(num_nodes=2, per_node=2)
    opts = EvalOptions(
        batch_tokens=128,
        first_layer_start=start,
        token_movement=movement,
        dedupe_dispatch=dedupe,
        replica_choice=replica_choice,
    )
    r = evaluate_placement(experts, p, topo, opts, slot_order=slot_order)
    ref = reference_counts(experts, p, topo, opts, slot_order=slot_order)
    for name, arr in ref.items():
        np.testing.assert_array_equal(getattr(r, name), arr, err_msg=name)
