"""Within-node rebalancing of MoETuner+: remote counts by hand, proposals that even out the NIC traffic and keep
every node's expert set, a search that never ends slower on the profile, nothing to do on one node."""

from __future__ import annotations

import numpy as np
import pytest

from common.errors import ConfigError
from moe.placement.deadline import Deadline
from moe.placement.moetuner_plus import MoETunerPlus, node_balance_search
from moe.placement.node_balance import node_balance_proposals, remote_counts
from tests.moe.search_case import TOPO, search_case

NODE_OF = np.array([0, 0, 1, 1])


def _node_sets(layer, node_of):
    return [sorted(e for g, gpu in enumerate(layer) if node_of[g] == n for e in gpu) for n in (0, 1)]


def test_remote_counts_by_hand():
    layer = [[0, 1], [2, 3], [4, 5], [6, 0]]  # expert 0 on GPU 0 (node 0) and GPU 3 (node 1)
    experts = np.array([[0, 2, 4, 6], [1, 3, 5, 7]])  # [k=2, T=4]: token t routes to both ids of column t
    src = np.array([0, 1, 2, 3])  # tokens 0, 1 on node 0; tokens 2, 3 on node 1
    r = remote_counts(layer, experts, src, NODE_OF, 8)
    # Node 0's GPUs: far tokens are 2 and 3 (experts 4, 5, 6, 7), node 1's: tokens 0 and 1 (0, 1, 2, 3).
    np.testing.assert_array_equal(r[0], r[1])
    np.testing.assert_array_equal(r[0], [0, 0, 0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(r[2], [0.5, 1, 1, 1, 0, 0, 0, 0])  # expert 0 has two copies


def test_proposals_move_far_traffic_off_the_busiest_nic_and_keep_node_sets():
    # GPU 0 holds the two experts that every token of node 1 uses; GPU 1, on the same node, holds cold ones.
    layer = [[0, 1], [2, 3], [4, 5], [6, 7]]
    experts = np.array([[0] * 6 + [4] * 6, [1] * 6 + [5] * 6])
    src = np.array([2] * 6 + [0] * 6)  # tokens on node 1 use 0, 1; tokens on node 0 use 4, 5
    load = np.array([6, 6, 6, 6, 6, 6, 6, 6], dtype=float)
    remote = remote_counts(layer, experts, src, NODE_OF, 8)
    props = node_balance_proposals(layer, remote, load, NODE_OF, top=4)
    assert props, "an uneven NIC load must give proposals"
    first = props[0]
    assert _node_sets(first, NODE_OF) == _node_sets(layer, NODE_OF)

    def busiest_per_node(lay):
        nic = np.array([remote[g, lay[g]].sum() for g in range(4)])
        return [nic[NODE_OF == n].max() for n in (0, 1)]

    assert sum(busiest_per_node(first)) < sum(busiest_per_node(layer))  # 12 + 12 -> 6 + 12
    for cand in props:
        assert [len(g) for g in cand] == [2, 2, 2, 2]
        assert _node_sets(cand, NODE_OF) == _node_sets(layer, NODE_OF)


def test_no_proposals_on_one_node():
    layer = [[0, 1], [2, 3]]
    experts = np.array([[0, 2], [1, 3]])
    remote = remote_counts(layer, experts, np.array([0, 1]), np.array([0, 0]), 4)
    assert not remote.any()
    assert node_balance_proposals(layer, remote, np.ones(4), np.array([0, 0]), top=4) == []


def test_node_balance_search_never_ends_slower_and_keeps_node_sets(trace):
    case = search_case(*trace)
    problem, start, model = case.problem, case.start, case.model
    out, rep = node_balance_search(model, problem, start, sweeps=1, top=8, deadline=Deadline.after(60))
    assert rep["moves_tried"] > 0
    assert rep["profile_time_after_s"] <= rep["profile_time_before_s"]
    assert rep["profile_time_after_s"] == pytest.approx(
        float(model.forward(out.assignment)[0].sum()), rel=1e-12
    )
    node_of = TOPO.node_of()
    for a, b in zip(start.assignment, out.assignment, strict=True):
        assert _node_sets(a, node_of) == _node_sets(b, node_of)
    assert (out.experts_per_gpu() == start.experts_per_gpu()).all()


def test_node_balance_options_are_checked():
    assert MoETunerPlus().node_balance_sweeps == 1  # on by default
    with pytest.raises(ConfigError, match="node_balance_sweeps"):
        MoETunerPlus(node_balance_sweeps=-1)
    with pytest.raises(ConfigError, match="node_balance_top"):
        MoETunerPlus(node_balance_top=0)
    with pytest.raises(ConfigError, match="cluster_top"):
        MoETunerPlus(cluster_top=0)
