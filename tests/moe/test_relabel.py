"""moe.relabel: a node-preserving GPU renumbering that keeps the most copies in place."""

from __future__ import annotations

import numpy as np
import pytest

from common.errors import InputError
from moe.migration import moved_copies
from moe.placement.base import Placement
from moe.relabel import best_permutation, relabel, relabel_chain, shared_copies


def _p(layers: list[list[list[int]]]) -> Placement:
    return Placement(layers, num_experts=8, name="t")


OLD = _p([[[0, 1], [2, 3], [4, 5], [6, 7]], [[0, 2], [1, 3], [4, 6], [5, 7]]])


def test_a_permuted_copy_is_relabelled_back_with_no_moves() -> None:
    perm = [2, 3, 0, 1]  # swap the two nodes of 2 ranks
    new = _p([[layer[perm[g]] for g in range(4)] for layer in OLD.assignment])
    assert moved_copies(OLD, new).sum() == 16
    back = relabel(new, OLD, ranks_per_node=2)
    assert back.assignment == OLD.assignment and moved_copies(OLD, back).sum() == 0
    assert back.info["relabelled_kept"] == 16


def test_only_node_preserving_permutations_are_used() -> None:
    # the best free permutation would put new GPU 0 on old GPU 2 and new GPU 1 on old GPU 0, across nodes
    shared = np.array([[0, 5, 0, 0], [0, 0, 0, 0], [5, 0, 0, 0], [0, 0, 0, 0]])
    perm = best_permutation(shared, ranks_per_node=2)
    nodes_old, nodes_new = perm // 2, np.arange(4) // 2
    for q in (0, 1):  # every new node's ranks come from one old node
        assert len(set(nodes_old[nodes_new == q])) == 1
    assert shared[perm, np.arange(4)].sum() == 5


def test_hand_counted_overlap_and_never_more_moves() -> None:
    new = _p([[[2, 3], [0, 1], [6, 7], [4, 5]], [[0, 2], [4, 6], [1, 3], [5, 7]]])
    s = shared_copies(OLD, new)
    assert s[0, 1] == 2 + 0 and s[1, 0] == 2 and s[0, 0] == 2 and s.sum() == 16
    out = relabel(new, OLD, ranks_per_node=2)
    assert moved_copies(OLD, out).sum() <= moved_copies(OLD, new).sum()
    assert sorted(map(sorted, out.assignment[0])) == sorted(map(sorted, new.assignment[0]))  # same groups


def test_chain_relabels_against_the_previous_target_and_checks_shapes() -> None:
    chain = relabel_chain([OLD, _p([[layer[g] for g in (1, 0, 3, 2)] for layer in OLD.assignment])], 2)
    assert chain[1].assignment == OLD.assignment
    with pytest.raises(InputError, match="nodes of 3"):
        best_permutation(np.zeros((4, 4)), 3)
