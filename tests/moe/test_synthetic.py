"""Synthetic traces: shapes of the presets, determinism, and knobs that move the measured statistics."""

from __future__ import annotations

import numpy as np
import pytest

from common.errors import InputError
from moe.stats import affinity_scores, cross_layer_counts, expert_load, load_distance, trace_statistics
from moe.synthetic import PRESETS, ModelShape, generate_trace
from moe.trace_split import split_by_prompt


@pytest.mark.parametrize(
    "name,shape",
    [
        ("mixtral_8x7b", (8, 2, 32)),
        ("deepseek_v2_lite", (64, 6, 26)),
        ("olmoe", (64, 8, 16)),
        ("qwen3_235b", (128, 8, 94)),
        ("deepseek_v3", (256, 8, 58)),
    ],
)
def test_presets_have_the_real_shapes(name: str, shape: tuple[int, int, int]) -> None:
    s = PRESETS[name]
    assert (s.num_experts, s.top_k, s.num_layers) == shape
    tr = generate_trace(name, 300, seed=1)
    assert tr.experts.shape == (300, shape[2], shape[1]) and tr.num_experts == shape[0]
    tr.validate()


def test_same_seed_same_trace_and_seed_matters() -> None:
    a = generate_trace("deepseek_v2_lite", 2000, skew=0.7, affinity=0.6, drift=0.4, seed=3, with_weights=True)
    b = generate_trace("deepseek_v2_lite", 2000, skew=0.7, affinity=0.6, drift=0.4, seed=3, with_weights=True)
    c = generate_trace("deepseek_v2_lite", 2000, skew=0.7, affinity=0.6, drift=0.4, seed=4, with_weights=True)
    np.testing.assert_array_equal(a.experts, b.experts)
    np.testing.assert_array_equal(a.weights, b.weights)
    np.testing.assert_array_equal(a.prompt_offsets, b.prompt_offsets)
    assert not np.array_equal(a.experts, c.experts)
    np.testing.assert_allclose(a.weights.sum(axis=2), 1.0, rtol=1e-5)


def test_skew_raises_imbalance() -> None:
    imb = [
        trace_statistics(generate_trace("olmoe", 20000, skew=s, affinity=0.3, seed=0).experts, 64).metrics()[
            "imbalance_max_over_mean"
        ]
        for s in (0.0, 0.5, 1.0, 1.5)
    ]
    assert imb == sorted(imb) and imb[0] < 1.6 < imb[-1]


def test_skew_zero_affinity_zero_is_uniform_and_independent() -> None:
    tr = generate_trace("mixtral_8x7b", 40000, skew=0.0, affinity=0.0, seed=2)
    p = expert_load(tr.experts, 8)
    np.testing.assert_allclose(p / p.mean(axis=1, keepdims=True), 1.0, atol=0.05)  # ~5 sd of 10^4 counts
    assert affinity_scores(cross_layer_counts(tr.experts, 8)).max() < 2e-3


def test_affinity_raises_affinity_score() -> None:
    scores = []
    for a in (0.0, 0.4, 0.8, 1.0):
        tr = generate_trace("deepseek_v2_lite", 20000, skew=0.5, affinity=a, seed=0)
        scores.append(affinity_scores(cross_layer_counts(tr.experts, 64)).mean())
    assert scores == sorted(scores) and scores[0] < 0.005 and scores[-1] > 0.05


def test_drift_moves_evaluation_load_away_from_profile() -> None:
    tv = []
    for d in (0.0, 0.5, 1.0):
        tr = generate_trace("mixtral_8x7b", 60000, skew=1.0, affinity=0.5, drift=d, seed=0)
        prof, ev = split_by_prompt(tr, 0.5)
        if d > 0:
            assert tr.meta["drift_prompt"] == prof.num_prompts
        tv.append(load_distance(expert_load(prof.experts, 8), expert_load(ev.experts, 8)).mean())
    assert tv == sorted(tv) and tv[0] < 0.03 and tv[-1] > 0.1


def test_per_layer_skew_and_custom_shape() -> None:
    shape = ModelShape("custom", num_experts=16, top_k=4, num_layers=3)
    tr = generate_trace(shape, 20000, skew=[0.0, 2.0, 0.0], affinity=0.0, seed=0)
    imb = trace_statistics(tr.experts, 16).imbalance
    assert imb[1] > 1.5 > imb[0] and imb[2] < 1.1


def test_bad_knobs_are_refused() -> None:
    with pytest.raises(InputError, match="unknown preset 'gpt4'"):
        generate_trace("gpt4", 10)
    with pytest.raises(InputError, match="'affinity' must be a number in"):
        generate_trace("olmoe", 10, affinity=1.5)
    with pytest.raises(InputError, match="'skew' must be a number or a list of 16"):
        generate_trace("olmoe", 10, skew=[1.0, 2.0])
    with pytest.raises(InputError, match="'fanout' must be an integer in 8..64"):
        generate_trace("olmoe", 10, fanout=2)
    with pytest.raises(InputError, match="'num_tokens'"):
        generate_trace("olmoe", 0)


@pytest.mark.slow
def test_million_mixtral_tokens() -> None:
    tr = generate_trace("mixtral_8x7b", 1_000_000, seed=0)
    assert tr.experts.shape == (1_000_000, 32, 2)
    assert expert_load(tr.experts, 8).sum() == 64_000_000
