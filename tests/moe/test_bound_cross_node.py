"""The cross-node lower bound: below the brute-force minimum of split tokens and below the cost model's time
of every placement of toy cases (all of them) and of the placers on a generated trace."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from moe.bound import layer_time_lower_bound
from moe.bound_cross_node import cross_node_bound, max_cut_pairs, min_split_tokens
from moe.cost_model import EvalOptions, evaluate_placement
from moe.placement.base import Placement
from moe.placement.eplb import eplb
from moe.placement.exflow import exflow
from moe.placement.simple import contiguous
from moe.stats import cross_layer_counts, expert_load
from moe.synthetic import generate_trace
from moe.topology import Compute, Topology


def _clustered_trace(tokens: int, layers: int, experts: int, k: int, seed: int) -> np.ndarray:
    """int ``[T, L, k]``: each token draws its experts mostly from one of two halves (distinct per token)."""
    rng = np.random.default_rng(seed)
    out = np.empty((tokens, layers, k), dtype=np.int64)
    half = experts // 2
    for t in range(tokens):
        for li in range(layers):
            pool = np.arange(half) + half * rng.integers(2) if rng.random() < 0.7 else np.arange(experts)
            out[t, li] = rng.choice(pool, size=k, replace=False)
    return out


def test_max_cut_pairs():
    assert max_cut_pairs(6, 2) == 9  # 3 + 3
    assert max_cut_pairs(6, 3) == 12  # 2 + 2 + 2
    assert max_cut_pairs(5, 2) == 6  # 2 + 3
    assert max_cut_pairs(6, 1) == 0 and max_cut_pairs(1, 4) == 0


def _brute_min_split(ex: np.ndarray, e: int, node_slots: int, replicated: int) -> int:
    """Every placement on 2 nodes: each expert on node 0, 1 or both, at most ``node_slots`` per node."""
    best = ex.shape[0]
    sets = [frozenset(row) for row in ex.tolist()]
    for code in itertools.product((1, 2, 3), repeat=e):  # bit 0: node 0, bit 1: node 1
        code = np.array(code)
        if (code == 3).sum() > replicated:
            continue
        on = [set(np.flatnonzero(code & (1 << n)).tolist()) for n in range(2)]
        if max(len(on[0]), len(on[1])) > node_slots:
            continue
        best = min(best, sum(not (s <= on[0] or s <= on[1]) for s in sets))
    return best


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("node_slots", "replicated"), [(4, 0), (5, 1), (5, 2)])
def test_split_bound_is_below_the_brute_force_minimum(seed, node_slots, replicated):
    ex = _clustered_trace(60, 1, 8, 3, seed)[:, 0]
    lb = min_split_tokens(ex, 8, 2, node_slots, replicated)
    exact = _brute_min_split(ex, 8, node_slots, replicated)
    assert 0.0 <= lb <= exact + 1e-9
    if replicated == 0:
        assert lb > 0  # the clustered trace forces splits the bound sees


def test_replica_aware_split_bound_is_positive_and_below_the_minimum():
    ex = _clustered_trace(60, 1, 8, 3, 2)[:, 0]
    lb = min_split_tokens(ex, 8, 2, 5, 1)  # one expert may have copies on both nodes
    assert 0 < lb <= _brute_min_split(ex, 8, 5, 1)


def _toy_topology(ranks_per_node: int) -> Topology:
    return Topology(
        name="toy", num_nodes=2, gpus_per_node=ranks_per_node, intra_node_gbps=400, inter_node_gbps=50,
        gpu_port_gbps=300, nic_gbps=40, hidden_size=1024, compute=Compute(time_per_token_s=1e-8),
    )  # fmt: skip


def _all_layers(e: int, g: int, slots: int, replicas: bool):
    """Every assignment of one layer: each expert on 1 (or, with replicas, 1-2) GPUs, at most ``slots``
    per GPU."""
    choices = [(a,) for a in range(g)] + (
        [(a, b) for a in range(g) for b in range(a + 1, g)] if replicas else []
    )
    for pick in itertools.product(choices, repeat=e):
        layer = [[x for x in range(e) if gi in pick[x]] for gi in range(g)]
        if max(len(gpu) for gpu in layer) <= slots:
            yield layer


OPTIONS = [
    EvalOptions(batch_tokens=30),
    EvalOptions(batch_tokens=30, token_movement="home", dedupe_dispatch=False),
    EvalOptions(batch_tokens=30, replica_choice="local", first_layer_start="round_robin"),
]


@pytest.mark.parametrize(("slots", "replicas", "layers"), [(3, False, 2), (4, True, 1)])
def test_bound_is_below_the_cost_of_every_toy_placement(slots, replicas, layers):
    topo = _toy_topology(1)
    ex = _clustered_trace(60, layers, 6, 2, seed=3)
    one = list(_all_layers(6, 2, slots, replicas))
    assert len(one) > 10
    for opts in OPTIONS:
        bound = cross_node_bound(ex, 6, topo, slots, 30, opts.dedupe_dispatch)
        assert bound.split_tokens.sum() > 0 or replicas  # with 2 replicas of 6 experts the term is 0 here
        best = np.inf
        for layer_set in itertools.product(one, repeat=layers):
            p = Placement(list(layer_set), num_experts=6)
            t = evaluate_placement(ex, p, topo, opts).summary()["layer_time_tail_s"]
            best = min(best, t)
        assert bound.total_s <= best * (1 + 1e-9)


def test_bound_is_below_every_placement_of_two_ranks_per_node():
    topo = _toy_topology(2)
    ex = _clustered_trace(60, 1, 8, 3, seed=4)
    opts = EvalOptions(batch_tokens=30)
    bound = cross_node_bound(ex, 8, topo, 2, 30)
    rng = np.random.default_rng(0)
    for _ in range(200):
        perm = rng.permutation(8)
        p = Placement([[perm[2 * g : 2 * g + 2].tolist() for g in range(4)]], num_experts=8)
        assert bound.total_s <= evaluate_placement(ex, p, topo, opts).summary()["layer_time_tail_s"] * (
            1 + 1e-9
        )


def test_bound_is_below_the_placers_on_a_generated_trace_and_above_the_old_one():
    t = generate_trace("deepseek_v2_lite", 6000, skew=1.0, affinity=0.9, seed=5)
    ex, e = t.experts[:, :6].astype(np.int64), t.num_experts
    topo = _toy_topology(4)
    opts = EvalOptions(batch_tokens=2000)
    load, pairs = expert_load(ex, e), cross_layer_counts(ex, e)
    placements = [
        contiguous(6, e, 8),
        exflow(pairs, 8, 4, method="sweeps"),
        eplb(load, 8, 4, num_redundant=8),
    ]
    for p in placements:
        slots = int(p.experts_per_gpu().max())
        bound = cross_node_bound(ex, e, topo, slots, 2000)
        old = layer_time_lower_bound(2000, 6, topo, slots).total_s * 6
        cost = evaluate_placement(ex, p, topo, opts).summary()["layer_time_tail_s"]
        assert old <= bound.total_s <= cost
    no_replicas = cross_node_bound(ex, e, topo, 8, 2000).total_s
    assert no_replicas > layer_time_lower_bound(2000, 6, topo, 8).total_s * 6  # a cross-node term appears
