"""The recorder on tiny random-weight transformers MoE models (no download): it must match the routers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from common.errors import InputError
from moe.recorder import TINY_FAMILIES, find_routers, record_texts, record_trace, tiny_model
from moe.trace import load_trace, save_trace

pytest.importorskip("transformers")


@torch.no_grad()
def reference_choices(model: torch.nn.Module, prompts: list[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """Recompute each router's top-k from its input and weight matrix (softmax top-k, renormalised when the
    config says so), independently of the router's own outputs."""
    routers = find_routers(model)
    inputs: list[list[torch.Tensor]] = [[] for _ in routers]
    handles = [
        mod.register_forward_pre_hook(lambda _m, args, i=i: inputs[i].append(args[0].detach()))
        for i, (_, mod) in enumerate(routers)
    ]
    for p in prompts:
        model(input_ids=p[None], use_cache=False)
    for h in handles:
        h.remove()
    k = model.config.num_experts_per_tok
    norm = getattr(model.config, "norm_topk_prob", True)
    idx_layers, w_layers = [], []
    for (_, mod), hs in zip(routers, inputs, strict=True):
        h = torch.cat([x.reshape(-1, x.shape[-1]) for x in hs])
        probs = torch.softmax(h.float() @ mod.weight.float().T, dim=-1)
        w, idx = torch.topk(probs, k, dim=-1)
        if norm:
            w = w / w.sum(-1, keepdim=True)
        idx_layers.append(idx.numpy())
        w_layers.append(w.numpy())
    return np.stack(idx_layers, axis=1), np.stack(w_layers, axis=1)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_trace_matches_the_routers(family: str, tmp_path: Path) -> None:
    model = tiny_model(family)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 97, (n,), generator=g) for n in (6, 11, 4)]
    trace = record_trace(model, prompts, meta={"model": family})
    k = model.config.num_experts_per_tok
    assert trace.experts.shape == (21, 3, k) and trace.num_experts == 8
    assert trace.prompt_offsets.tolist() == [0, 6, 17, 21]
    assert trace.meta["routers"] == [f"model.layers.{i}.mlp.gate" for i in range(3)]
    ref_idx, ref_w = reference_choices(model, prompts)
    np.testing.assert_array_equal(np.sort(trace.experts, axis=2), np.sort(ref_idx, axis=2))
    np.testing.assert_array_equal(trace.experts, ref_idx)  # same (descending-probability) order
    np.testing.assert_allclose(trace.weights, ref_w, rtol=1e-5, atol=1e-6)
    via_logits = record_trace(model, prompts, mode="logits")
    np.testing.assert_array_equal(via_logits.experts, trace.experts)
    np.testing.assert_allclose(via_logits.weights, trace.weights, rtol=1e-5, atol=1e-6)
    save_trace(trace, tmp_path / "rec.npz")
    back = load_trace(tmp_path / "rec.npz")
    np.testing.assert_array_equal(back.experts, trace.experts)
    assert back.meta["model"] == family


class CharTokenizer:
    """Stands in for a Hugging Face tokenizer: one id per character."""

    def __call__(self, text: str, truncation: bool = False, max_length: int | None = None) -> dict:
        ids = [ord(c) % 97 for c in text]
        return {"input_ids": ids[:max_length] if truncation and max_length else ids}


def test_record_texts_truncates_and_keeps_prompts() -> None:
    model = tiny_model("mixtral")
    trace = record_texts(
        model, CharTokenizer(), ["hello world", "moe", "routing traces"], max_tokens_per_prompt=8
    )
    assert trace.prompt_offsets.tolist() == [0, 8, 11, 19]


def test_non_moe_model_is_refused() -> None:
    with pytest.raises(InputError, match="no top-k router module"):
        record_trace(torch.nn.Linear(2, 2), [[1, 2]])


@pytest.mark.parametrize("mode", ["router", "logits"])
def test_batched_forward_passes_drop_the_padding(mode: str) -> None:
    model = tiny_model("qwen2_moe", seed=3)
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(3, 97, (n,), generator=g) for n in (5, 12, 1, 7, 9)]
    one = record_trace(model, prompts, mode=mode)
    batched = record_trace(model, prompts + [torch.zeros(0, dtype=torch.long)], mode=mode, batch_size=3)
    assert batched.prompt_offsets.tolist() == one.prompt_offsets.tolist() == [0, 5, 17, 18, 25, 34]
    np.testing.assert_array_equal(batched.experts, one.experts)
    np.testing.assert_allclose(batched.weights, one.weights, rtol=1e-5, atol=1e-6)


def test_tiny_model_is_seeded_and_checks_the_family() -> None:
    a, b = tiny_model("olmoe", seed=5), tiny_model("olmoe", seed=5)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(next(tiny_model("olmoe", seed=6).parameters()), next(a.parameters()))
    with pytest.raises(InputError, match="family must be one of"):
        tiny_model("llama")


def test_bad_batch_size_is_refused() -> None:
    with pytest.raises(InputError, match="batch_size must be a positive integer"):
        record_trace(tiny_model("mixtral"), [[1, 2]], batch_size=0)
