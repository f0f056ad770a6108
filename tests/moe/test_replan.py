"""Migration cost and the re-placement policies on toy placements with hand-computed moves and bytes."""

from __future__ import annotations

import numpy as np
import pytest

from common.errors import ConfigError, InputError
from moe.migration import expert_weight_bytes, migration, moved_copies
from moe.placement.base import Placement
from moe.replan import candidate_steps, greedy_layer, incremental_step, plan
from moe.replan_options import replan_options
from moe.topology import Compute, Topology

# 2 nodes x 2 GPUs; 100 GB/s inside a node, 10 GB/s across; one expert copy = 1e9 FLOP / 2 x 2 B = 1 GB.
TOY = Topology(
    name="toy", num_nodes=2, gpus_per_node=2, intra_node_gbps=100.0, inter_node_gbps=10.0,
    link_model="pairwise", hidden_size=4, dtype_bytes=2.0, compute=Compute(expert_flops_per_token=1e9),
)  # fmt: skip
IDENTITY = [[0], [1], [2], [3]]


def placement(*layers: list[list[int]]) -> Placement:
    return Placement([list(map(list, lay)) for lay in layers], num_experts=4, name="toy")


def test_expert_bytes_are_swiglu_weights() -> None:
    assert expert_weight_bytes(TOY) == 1e9  # 3 x hidden x ffn params = FLOPs / 2, x 2 bytes
    assert expert_weight_bytes(TOY, 123.0) == 123.0


def test_migration_bytes_and_seconds_by_hand() -> None:
    old = placement(IDENTITY, IDENTITY)
    new = placement([[1], [0], [2], [3]], [[2], [1], [0], [3]])  # swap inside node 0; swap across nodes
    mig = migration(old, new, TOY, expert_weight_bytes(TOY))
    np.testing.assert_array_equal(mig.copies, [2, 2])
    assert mig.bytes == 4e9
    expected = np.zeros((4, 4), dtype=np.int64)
    expected[0, 1] = expected[1, 0] = expected[0, 2] = expected[2, 0] = 1
    np.testing.assert_array_equal(mig.traffic, expected)
    assert mig.seconds == pytest.approx(1e9 / 10e9)  # the slowest transfer: 1 GB across nodes at 10 GB/s
    assert mig.amortised_s(100) == pytest.approx(1e-3)
    assert migration(old, old, TOY, 1e9).seconds == 0.0


def test_a_new_replica_is_read_from_the_nearest_holder() -> None:
    old = placement([[0, 1], [2], [3], [0]])
    new = placement([[0, 1], [2, 0], [3], [0]])  # a third copy of expert 0 on GPU 1
    mig = migration(old, new, TOY, 1e9)
    assert mig.traffic[0, 1] == 1 and mig.traffic.sum() == 1  # GPU 0 (same node), not GPU 3
    assert mig.seconds == pytest.approx(0.01)


def test_moved_copies_ignore_dropped_copies() -> None:
    old = placement([[0, 1], [2], [3], [0]])
    new = placement([[1], [2], [3], [0]])  # a replica dropped: nothing to move
    np.testing.assert_array_equal(moved_copies(old, new), [0])


TARGETS = [placement(IDENTITY), placement([[3], [0], [1], [2]]), placement([[2], [3], [0], [1]])]


def matches(target: list[list[int]]):  # noqa: ANN201 - a gain: copies on their target GPU
    return lambda layer: float(sum(len(set(a) & set(b)) for a, b in zip(layer, target, strict=True)))


def test_static_and_periodic() -> None:
    assert [p.assignment for p in plan("static", TARGETS)] == [TARGETS[0].assignment] * 3
    assert [p.assignment for p in plan("periodic", TARGETS)] == [t.assignment for t in TARGETS]


def test_incremental_budget_zero_is_static_and_unlimited_is_periodic() -> None:
    def gain_for(k: int, current: Placement):  # noqa: ANN202
        return lambda li, layer: matches(TARGETS[k].assignment[li])(layer)

    zero = plan("incremental", TARGETS, 0, gain_for)
    unlimited = plan("incremental", TARGETS, None, gain_for)
    assert [p.assignment for p in zero] == [p.assignment for p in plan("static", TARGETS)]
    assert [p.assignment for p in unlimited] == [p.assignment for p in plan("periodic", TARGETS)]
    m_zero = [migration(a, b, TOY, 1e9).bytes for a, b in zip(zero, zero[1:], strict=False)]
    m_unl = [migration(a, b, TOY, 1e9).bytes for a, b in zip(unlimited, unlimited[1:], strict=False)]
    assert m_zero == [0.0, 0.0] and m_unl == [4e9, 4e9]  # every expert moves one GPU on: 4 copies of 1 GB


def test_budget_that_covers_the_difference_takes_the_target() -> None:
    out = incremental_step(TARGETS[0], TARGETS[1], 4, None)
    assert out.assignment == TARGETS[1].assignment


def test_greedy_swap_respects_the_budget_and_moves_two_copies() -> None:
    # a 4-cycle (every expert one GPU on) without replicas: each step is a swap of 2 copies
    start, target = IDENTITY, TARGETS[1].assignment[0]
    # budget 2: one swap (2 copies, 1 expert placed); 3: a second swap re-moves an already moved expert,
    # so it adds one copy and places one more expert
    for budget, copies, placed in ((1, 0, 0), (2, 2, 1), (3, 3, 2)):
        out = greedy_layer(start, target, budget, matches(target))
        assert sum(len(set(b) - set(a)) for a, b in zip(start, out, strict=True)) == copies
        assert matches(target)(out) == placed


def test_replica_steps_replace_one_copy() -> None:
    cur = [[0, 1], [2, 0], [3], [1]]  # experts 0 and 1 have two copies
    target = [[0, 1], [2, 3], [3], [1]]  # GPU 1 should hold a second copy of 3 instead of one of 0
    steps = candidate_steps(cur, target)
    assert steps == [[[0, 1], [2, 3], [3], [1]]]  # overwrite the spare copy of 0 on GPU 1: 1 copy
    assert greedy_layer(cur, target, 1, matches(target)) == target


def test_min_ratio_stops_steps_that_do_not_pay() -> None:
    start, target = IDENTITY, TARGETS[1].assignment[0]
    assert greedy_layer(start, target, 2, matches(target), min_ratio=1.0) == start  # gain 1 per 2 copies < 1


def test_bad_budget_names_the_key() -> None:
    with pytest.raises(ConfigError, match="replan.move_budget"):
        replan_options({"move_budget": -1})
    with pytest.raises(ConfigError, match="replan.policy"):
        replan_options({"policy": "sometimes"})
    with pytest.raises(InputError, match="move budget"):
        incremental_step(TARGETS[0], TARGETS[1], -1, None)
