"""``moe.layer_model.LayerModel`` gives the cost model's own per-layer numbers bit for bit: the layer's tail
(dispatch + compute + combine, summed over batches) and the token positions after it, for every replica
rule, token movement, slot order and dedupe setting, with and without replicas, on 1 and 2 nodes."""

from __future__ import annotations

import numpy as np
import pytest

from moe.cost_model import EvalOptions
from moe.layer_model import LayerModel, even_candidates, full_replay_time, layer_holders
from moe.placement.base import swap_experts
from moe.placement.eplb import eplb
from moe.stats import expert_load
from moe.synthetic import generate_trace
from moe.topology import topology_from_config


def _topo(nodes: int, gpus: int):  # noqa: ANN202
    return topology_from_config(
        {"name": "t", "num_nodes": nodes, "gpus_per_node": gpus, "intra_node_gbps": 400, "inter_node_gbps": 50,
         "hidden_size": 4096, "dtype_bytes": 2, "compute": {"time_per_token_s": 2e-7}}
    )  # fmt: skip


@pytest.mark.parametrize("nodes,gpus", [(1, 4), (2, 4)])
@pytest.mark.parametrize("replicas", [0, 8])
@pytest.mark.parametrize(
    "movement,rule,order,dedupe",
    [("follow", "even", "unordered", True), ("follow", "local", "unordered", True),
     ("home", "even", "unordered", True), ("follow", "even", "score", False), ("follow", "local", "score", True)],
)  # fmt: skip
def test_layer_times_and_positions_equal_the_cost_models_replay(
    nodes, gpus, replicas, movement, rule, order, dedupe
):
    t = generate_trace("deepseek_v2_lite", 3000, skew=1.0, affinity=0.9, seed=11)
    ex, e = t.experts[:, :4].astype(np.int64), t.num_experts
    topo = _topo(nodes, gpus)
    opts = EvalOptions(batch_tokens=512, token_movement=movement, replica_choice=rule, dedupe_dispatch=dedupe)
    p = eplb(expert_load(ex, e), topo.num_gpus, gpus, num_redundant=replicas)
    assert p.has_replicas == (replicas > 0)
    model = LayerModel(ex, topo, opts, order, e)
    src = model.start
    for li, layer in enumerate(p.assignment):
        got_t, got_pos = model.time(li, layer, src)
        ref_t, ref_pos = full_replay_time(model, li, layer, src)
        assert got_t == ref_t and got_t > 0
        np.testing.assert_array_equal(got_pos, ref_pos)
        src = ref_pos
    assert model.nb == 5 and model.by_layer.shape == (4, t.top_k, 2560)


def test_even_candidates_list_holders_in_ascending_order() -> None:
    held = layer_holders([[0, 2], [1, 2], [2, 3]], 4)
    cand, count = even_candidates(held)
    assert count.tolist() == [1, 1, 3, 1]
    assert cand.tolist() == [[0, -1, -1], [1, -1, -1], [0, 1, 2], [2, -1, -1]]


def _replays_equal(a, b) -> None:  # noqa: ANN001
    for f in ("dest", "first", "nxt", "load", "d_cnt", "c_cnt"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)
    assert a.time == b.time


@pytest.mark.parametrize("nodes", [1, 2])
@pytest.mark.parametrize("replicas", [0, 8])
@pytest.mark.parametrize(
    "movement,order,dedupe",
    [("follow", "unordered", True), ("home", "unordered", True), ("follow", "score", False)],
)
def test_a_move_replayed_on_the_tokens_it_touches_equals_the_whole_replay(
    nodes, replicas, movement, order, dedupe
):
    t = generate_trace("deepseek_v2_lite", 3000, skew=1.0, affinity=0.9, seed=11)
    ex, e = t.experts[:, :2].astype(np.int64), t.num_experts
    topo = _topo(nodes, 4)
    opts = EvalOptions(
        batch_tokens=512, token_movement=movement, replica_choice="even", dedupe_dispatch=dedupe
    )
    p = eplb(expert_load(ex, e), topo.num_gpus, 4, num_redundant=replicas)
    model = LayerModel(ex, topo, opts, order, e)
    assert model.positions_are_local
    layers = [[list(g) for g in layer] for layer in p.assignment]
    rep0 = model.replay(0, layers[0], model.start)
    rep1 = model.replay(1, layers[1], rep0.nxt)
    rng = np.random.default_rng(0)
    touched = []
    for _ in range(12):  # swaps between random GPUs, and (with replicas) one copy turned into another expert
        new = [list(g) for g in layers[0]]
        g1, g2 = rng.choice(topo.num_gpus, size=2, replace=False)
        x, y = int(rng.choice(new[g1])), int(rng.choice(new[g2]))
        if x in new[g2] or y in new[g1]:
            continue
        new = swap_experts(new, g1, x, g2, y)
        copies = layer_holders(new, e).sum(axis=0)
        spare = [i for i, z in enumerate(new[g2]) if copies[z] > 1]  # a copy whose expert has another one
        if spare and rng.random() < 0.5:
            new[g2][spare[0]] = next(z for z in range(e) if z not in new[g2])
        mv = model.moved(0, rep0, layers[0], new, model.start)
        whole = model.replay(0, new, model.start)
        _replays_equal(mv.applied(rep0), whole)
        _replays_equal(
            model.shifted(1, rep1, mv.tok, rep0.nxt[mv.tok], mv.nxt), model.replay(1, layers[1], whole.nxt)
        )
        touched.append(mv.tok.size / model.tok.size)
    assert touched and max(touched) < 1.0  # only part of the tokens is replayed
