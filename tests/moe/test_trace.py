"""Trace file format: round trip, the real trace, and every malformed case with a message that says where."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.errors import InputError
from moe.trace import Trace, load_trace, save_trace, validate_trace
from tests.conftest import REAL_TRACE, needs_real_trace


def small_trace(with_weights: bool = True) -> Trace:
    rng = np.random.default_rng(3)
    experts = np.argsort(rng.random((12, 3, 8)), axis=2)[:, :, :2]
    weights = rng.random((12, 3, 2)).astype(np.float32) if with_weights else None
    return Trace(
        experts,
        8,
        weights=weights,
        prompt_offsets=np.array([0, 5, 12]),
        meta={"model": "tiny", "layer_ids": [1, 2, 3]},
    )


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    tr = small_trace()
    save_trace(tr, tmp_path / "t.npz")
    back = load_trace(tmp_path / "t.npz")
    np.testing.assert_array_equal(back.experts, tr.experts)
    assert back.experts.dtype == np.uint8
    np.testing.assert_array_equal(back.weights, tr.weights)
    np.testing.assert_array_equal(back.prompt_offsets, tr.prompt_offsets)
    assert back.num_experts == 8 and back.meta == tr.meta
    assert not list(tmp_path.glob(".tmp-*"))


def test_round_trip_without_optional_fields_and_wide_ids(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ex = np.argsort(rng.random((7, 2, 300)), axis=2)[:, :, :3].astype(np.int64)
    save_trace(Trace(ex, 300), tmp_path / "w.npz")
    back = load_trace(tmp_path / "w.npz")
    assert back.experts.dtype == np.uint16 and back.weights is None and back.prompt_offsets is None
    np.testing.assert_array_equal(back.experts, ex)


@needs_real_trace
def test_loads_the_real_trace() -> None:
    tr = load_trace(REAL_TRACE)
    assert (tr.num_tokens, tr.num_layers, tr.top_k, tr.num_experts) == (192023, 26, 6, 64)
    assert tr.num_prompts == 1999 and tr.prompt_offsets[-1] == tr.num_tokens
    assert tr.meta["layer_ids"] == list(range(1, 27))
    assert "moe-beyond" in tr.meta["source"]


@needs_real_trace
@pytest.mark.slow
def test_real_trace_round_trip(tmp_path: Path) -> None:
    tr = load_trace(REAL_TRACE)
    save_trace(tr, tmp_path / "copy.npz")
    back = load_trace(tmp_path / "copy.npz")
    np.testing.assert_array_equal(back.experts, tr.experts)
    assert back.meta == tr.meta


def _bad(tr: Trace, match: str) -> None:
    with pytest.raises(InputError, match=match):
        validate_trace(tr)


def test_wrong_rank() -> None:
    _bad(Trace(np.zeros((4, 2), dtype=np.int64), 8), r"rank 3 .*shape \(4, 2\)")


def test_non_integer_ids() -> None:
    _bad(Trace(np.zeros((4, 2, 2), dtype=np.float32), 8), "must hold integers")


def test_id_out_of_range_names_token_and_layer() -> None:
    tr = small_trace()
    tr.experts[7, 2, 1] = 8 if tr.experts[7, 2, 0] != 8 else 9
    _bad(tr, r"expert id \d+ at token 7, layer 2, slot 1 is out of range; ids must be in 0..7")


def test_negative_id_names_token_and_layer() -> None:
    tr = small_trace()
    ex = tr.experts.astype(np.int64)
    ex[3, 1, 0] = -2
    _bad(Trace(ex, 8), r"negative expert id -2 at token 3, layer 1, slot 0")


def test_repeated_expert_within_top_k() -> None:
    tr = small_trace()
    tr.experts[10, 0, 1] = tr.experts[10, 0, 0]
    _bad(tr, r"token 10, layer 0 repeats an expert")


def test_mismatched_weights() -> None:
    tr = small_trace()
    _bad(Trace(tr.experts, 8, weights=np.ones((12, 3, 3), np.float32)), r"'weights' has shape \(12, 3, 3\)")
    w = tr.weights.copy()
    w[2, 1, 0] = np.nan
    _bad(Trace(tr.experts, 8, weights=w), r"token 2, layer 1, slot 0")
    _bad(Trace(tr.experts, 8, weights=np.ones((12, 3, 2), np.int64)), "floating point")


def test_empty_traces() -> None:
    _bad(Trace(np.zeros((0, 3, 2), dtype=np.uint8), 8), "empty trace")
    _bad(Trace(np.zeros((5, 0, 2), dtype=np.uint8), 8), "empty trace")


def test_bad_prompt_offsets() -> None:
    ex = small_trace().experts
    _bad(Trace(ex, 8, prompt_offsets=np.array([0, 5, 11])), "end at the token count 12")
    _bad(Trace(ex, 8, prompt_offsets=np.array([0, 5, 5, 12])), "prompt 1 spans 5:5")
    _bad(Trace(ex, 8, prompt_offsets=np.array([[0, 12]])), "1-d integer")


def test_bad_num_experts_and_top_k() -> None:
    ex = small_trace().experts
    _bad(Trace(ex, 0), "'num_experts' must be a positive integer")
    _bad(Trace(np.zeros((2, 1, 3), np.uint8), 2), "top_k 3 .* exceeds num_experts 2")


def test_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "t.npz"
    save_trace(small_trace(), path)
    data = path.read_bytes()
    for cut in (len(data) // 2, 40, 3):
        (tmp_path / "cut.npz").write_bytes(data[:cut])
        with pytest.raises(InputError, match=r"cut\.npz: not a(n)? (readable |valid )?\.npz"):
            load_trace(tmp_path / "cut.npz")


def test_plain_text_named_npz_is_refused_without_talking_about_pickles(tmp_path: Path) -> None:
    (tmp_path / "notes.npz").write_text("expert ids, one token per line\n1 2 3\n")
    with pytest.raises(InputError, match=r"notes\.npz: not an \.npz archive") as err:
        load_trace(tmp_path / "notes.npz")
    assert "pickle" not in str(err.value)


def test_missing_key_and_missing_file(tmp_path: Path) -> None:
    np.savez(tmp_path / "nokey.npz", experts=np.zeros((2, 2, 1), np.uint8))
    with pytest.raises(InputError, match=r"missing key 'num_experts'"):
        load_trace(tmp_path / "nokey.npz")
    with pytest.raises(InputError, match="trace file not found"):
        load_trace(tmp_path / "absent.npz")


def test_file_with_bad_ids_names_the_file(tmp_path: Path) -> None:
    ex = small_trace().experts.astype(np.int16)
    ex[4, 0, 0] = 99
    np.savez(tmp_path / "bad.npz", experts=ex, num_experts=np.array(8))
    with pytest.raises(InputError, match=r"bad\.npz: expert id 99 at token 4, layer 0"):
        load_trace(tmp_path / "bad.npz")


def test_top_k_key_must_match(tmp_path: Path) -> None:
    np.savez(tmp_path / "k.npz", experts=small_trace().experts, num_experts=np.array(8), top_k=np.array(3))
    with pytest.raises(InputError, match="'top_k' is 3"):
        load_trace(tmp_path / "k.npz")
