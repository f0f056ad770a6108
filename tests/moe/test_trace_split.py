"""Splitting by prompt, by tokens, and into batches."""

from __future__ import annotations

import numpy as np
import pytest

from common.errors import InputError
from moe.stats import expert_load
from moe.trace import Trace, load_trace
from moe.trace_split import batches, head, select_prompts, split_by_prompt, split_by_tokens
from tests.conftest import REAL_TRACE, needs_real_trace


def numbered_trace(lengths: list[int]) -> Trace:
    """Token i chooses experts (i % 50, 50 + i % 7) in both layers, so rows are identifiable."""
    t = sum(lengths)
    i = np.arange(t)
    ex = np.stack([i % 50, 50 + i % 7], axis=1)[:, None, :].repeat(2, axis=1)
    return Trace(ex.astype(np.uint8), 64, prompt_offsets=np.concatenate([[0], np.cumsum(lengths)]))


def test_split_by_fraction_keeps_file_order() -> None:
    tr = numbered_trace([3, 4, 5, 6])
    prof, ev = split_by_prompt(tr, 0.5)
    assert prof.num_prompts == 2 and ev.num_prompts == 2
    np.testing.assert_array_equal(prof.experts, tr.experts[:7])
    np.testing.assert_array_equal(ev.experts, tr.experts[7:])
    np.testing.assert_array_equal(ev.prompt_offsets, [0, 5, 11])


def test_split_by_seed_is_a_partition_of_prompts() -> None:
    lengths = [2, 7, 1, 4, 9, 3, 5, 6]
    tr = numbered_trace(lengths)
    prof, ev = split_by_prompt(tr, 0.25, seed=5)
    again, _ = split_by_prompt(tr, 0.25, seed=5)
    np.testing.assert_array_equal(prof.experts, again.experts)
    assert prof.num_prompts == 2 and ev.num_prompts == 6
    assert prof.num_tokens + ev.num_tokens == tr.num_tokens
    rows = lambda x: set(x.experts[:, 0, 0].tolist())  # noqa: E731 - token ids < 50 are unique here
    assert rows(prof).isdisjoint(rows(ev)) and rows(prof) | rows(ev) == rows(tr)
    assert sorted(np.diff(prof.prompt_offsets).tolist() + np.diff(ev.prompt_offsets).tolist()) == sorted(
        lengths
    )


def test_split_errors() -> None:
    tr = numbered_trace([3, 4])
    with pytest.raises(InputError, match=r"profile_fraction must be in \(0, 1\)"):
        split_by_prompt(tr, 1.0)
    with pytest.raises(InputError, match="no 'prompt_offsets'"):
        split_by_prompt(Trace(tr.experts, 64), 0.5)
    with pytest.raises(InputError, match="at least 2 prompts"):
        split_by_prompt(numbered_trace([7]), 0.5)


def test_split_by_tokens_and_head() -> None:
    tr = numbered_trace([3, 4, 5])
    a, b = split_by_tokens(tr, 0.5)
    assert a.num_tokens == 6 and b.num_tokens == 6
    np.testing.assert_array_equal(a.prompt_offsets, [0, 3, 6])
    np.testing.assert_array_equal(b.prompt_offsets, [0, 1, 6])
    h = head(tr, 5)
    assert h.num_tokens == 5 and h.prompt_offsets.tolist() == [0, 3, 5]
    assert head(tr, None) is tr and head(tr, 100) is tr


def test_batches_cover_all_tokens_in_order() -> None:
    tr = numbered_trace([5, 5, 5, 2])
    parts = list(batches(tr, 4))
    assert [p.num_tokens for p in parts] == [4, 4, 4, 4, 1]
    np.testing.assert_array_equal(np.concatenate([p.experts for p in parts]), tr.experts)
    assert parts[1].prompt_offsets.tolist() == [0, 1, 4]
    assert [p.num_tokens for p in batches(tr, 4, drop_last=True)] == [4, 4, 4, 4]
    for p in parts:
        p.validate()
    with pytest.raises(InputError, match="positive integer"):
        list(batches(tr, 0))


def test_select_prompts_rejects_bad_indices() -> None:
    tr = numbered_trace([2, 2, 2])
    with pytest.raises(InputError, match="repeat"):
        select_prompts(tr, np.array([0, 0]))
    with pytest.raises(InputError, match=r"in 0..2"):
        select_prompts(tr, np.array([3]))


@needs_real_trace
def test_real_trace_split_adds_up() -> None:
    tr = load_trace(REAL_TRACE)
    prof, ev = split_by_prompt(tr, 0.5, seed=0)
    assert prof.num_prompts + ev.num_prompts == 1999 and abs(prof.num_prompts - ev.num_prompts) <= 1
    np.testing.assert_array_equal(
        expert_load(prof.experts, 64) + expert_load(ev.experts, 64), expert_load(tr.experts, 64)
    )
