"""Windows of a trace by prompt order and synthetic drift across windows (``trace.windows``, ``trace.drift``)."""

from __future__ import annotations

import numpy as np
import pytest

from common.errors import ConfigError, InputError
from moe.drift import apply_drift, drift_permutations
from moe.stats import expert_load
from moe.trace import Trace
from moe.trace_source import trace_source
from moe.trace_split import split_windows


def numbered_trace(lengths: list[int], num_experts: int = 8) -> Trace:
    """Token i chooses experts (i % 4, 4 + i % 3) in both layers; prompts of the given lengths."""
    i = np.arange(sum(lengths))
    ex = np.stack([i % 4, 4 + i % 3], axis=1)[:, None, :].repeat(2, axis=1)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    return Trace(ex.astype(np.uint8), num_experts, prompt_offsets=offsets, slot_order="score")


def test_windows_follow_prompt_order() -> None:
    tr = numbered_trace([3, 4, 5, 6, 7])
    parts = split_windows(tr, 2)
    assert [p.num_prompts for p in parts] == [3, 2]  # array_split: the first window takes the extra prompt
    np.testing.assert_array_equal(parts[0].experts, tr.experts[:12])
    np.testing.assert_array_equal(parts[1].experts, tr.experts[12:])
    np.testing.assert_array_equal(parts[1].prompt_offsets, [0, 6, 13])


def test_more_windows_than_prompts_is_refused() -> None:
    with pytest.raises(InputError, match="3 windows need at least 3 prompts"):
        split_windows(numbered_trace([3, 4]), 3)


def test_drift_zero_is_the_identity_and_one_moves_every_expert() -> None:
    perms = drift_permutations(3, 2, 8, 0.0, seed=1)
    np.testing.assert_array_equal(perms, np.broadcast_to(np.arange(8), (3, 2, 8)))
    full = drift_permutations(3, 2, 8, 1.0, seed=1)
    assert (full[1] != full[0]).all()  # a cyclic shift of all 8 ids leaves none in place
    for w in range(3):
        for li in range(2):
            assert sorted(full[w, li]) == list(range(8))  # a permutation


def test_drift_rate_sets_how_many_experts_move_per_boundary() -> None:
    perms = drift_permutations(2, 4, 64, 0.25, seed=3)
    moved = (perms[1] != perms[0]).sum(axis=1)
    np.testing.assert_array_equal(moved, [16, 16, 16, 16])  # round(0.25 x 64) per layer


def test_drift_relabels_loads_without_changing_them() -> None:
    parts = split_windows(numbered_trace([5, 5, 5, 5]), 2)
    drifted = apply_drift(parts, 0.5, seed=0)
    np.testing.assert_array_equal(drifted[0].experts, parts[0].experts)
    perms = drift_permutations(2, 2, 8, 0.5, seed=0)
    before, after = expert_load(parts[1].experts, 8), expert_load(drifted[1].experts, 8)
    for li in range(2):
        np.testing.assert_array_equal(after[li, perms[1, li]], before[li])


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [("windows", 1, "trace.windows"), ("windows", -2, "trace.windows"), ("drift", 1.5, "trace.drift"),
     ("drift", -0.1, "trace.drift")],
)  # fmt: skip
def test_bad_window_options_name_the_key(key: str, value: float, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        trace_source({"_target_": "moe.trace_source.SyntheticTrace", key: value})


def test_source_windows_and_refusals() -> None:
    cfg = {"_target_": "moe.trace_source.SyntheticTrace", "tokens": 4000, "tokens_per_prompt": 100}
    parts = trace_source({**cfg, "windows": 4, "drift": 0.5}).windowed(seed=0)
    assert len(parts) == 4 and sum(p.num_tokens for p in parts) == 4000
    with pytest.raises(ConfigError, match="trace.windows"):
        trace_source({**cfg, "windows": 400}).windowed(seed=0)
    with pytest.raises(ConfigError, match="trace.windows"):
        trace_source({**cfg, "windows": 4}).profile_and_evaluation(seed=0)
    with pytest.raises(ConfigError, match="trace.windows"):
        trace_source(cfg).windowed(seed=0)
