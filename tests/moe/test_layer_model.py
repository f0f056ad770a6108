"""``moe.layer_model.LayerModel`` gives the cost model's own per-layer numbers bit for bit: the layer's tail
(dispatch + compute + combine, summed over batches) and the token positions after it, for every replica
rule, token movement, slot order and dedupe setting, with and without replicas, on 1 and 2 nodes."""

from __future__ import annotations

import numpy as np
import pytest

from moe.cost_model import EvalOptions
from moe.layer_model import LayerModel, even_candidates, full_replay_time, layer_holders
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
