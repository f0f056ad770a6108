"""EPLB-style balancer: replicas, slot layout, modes and refusals."""

from __future__ import annotations

import numpy as np
import pytest

from common.errors import InputError
from moe.placement.eplb import eplb, rebalance_experts
from moe.placement.evaluate import balancedness
from moe.placement.greedy import greedy
from moe.stats import expert_load
from tests.conftest import real_trace_head


@pytest.fixture(scope="module")
def real_load() -> np.ndarray:
    experts, e = real_trace_head(20000)
    return expert_load(experts, e)


def test_rebalance_outputs_are_consistent(real_load: np.ndarray) -> None:
    phy2log, log2phy, logcnt = rebalance_experts(real_load, 72, 2, 2, 8)
    num_layers, e = real_load.shape
    assert phy2log.shape == (num_layers, 72)
    assert (logcnt.sum(axis=1) == 72).all() and (logcnt >= 1).all()
    for li in range(num_layers):
        for x in range(e):
            slots = log2phy[li, x][log2phy[li, x] >= 0]
            assert len(slots) == logcnt[li, x]
            assert (phy2log[li, slots] == x).all()
        gpus = phy2log[li].reshape(8, 9)
        assert all(len(set(row.tolist())) == 9 for row in gpus)  # never two copies on one GPU


def test_hierarchical_keeps_groups_on_nodes(real_load: np.ndarray) -> None:
    pl = eplb(real_load, 8, 4, num_redundant=8, num_groups=4, hierarchical=True)
    for layer in pl.assignment:
        node0 = set().union(*map(set, layer[:4]))
        node1 = set().union(*map(set, layer[4:]))
        assert not node0 & node1  # replicas stay inside the node of their group
        groups0 = {x // 16 for x in node0}
        assert len(groups0) == 2  # 4 groups over 2 nodes, two whole groups each
    assert (pl.experts_per_gpu() == 9).all()


def test_global_with_replicas_beats_greedy_without(real_load: np.ndarray) -> None:
    with_rep = eplb(real_load, 8, 8, num_redundant=16, hierarchical=False)
    assert with_rep.has_replicas
    assert balancedness(with_rep, real_load).mean() > balancedness(greedy(real_load, 8), real_load).mean()
    without = eplb(real_load, 8, 8, num_redundant=0, hierarchical=False)
    assert not without.has_replicas and (without.experts_per_gpu() == 8).all()


def test_refusals_give_numbers() -> None:
    load = np.ones((2, 8))
    with pytest.raises(InputError, match="8 experts \\+ 1 redundant = 9 slots"):
        eplb(load, 4, 4, num_redundant=1)
    with pytest.raises(InputError, match="not a whole number of nodes"):
        eplb(load, 4, 3)
    with pytest.raises(InputError, match="slots per GPU exceed"):
        eplb(load, 2, 1, num_redundant=10, hierarchical=False)
