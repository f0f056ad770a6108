"""Record a routing trace from a Hugging Face transformers MoE model (prefill, one prompt per forward pass).

Two capture modes:

- ``router`` (default): forward hooks on the model's top-k router modules (transformers >= 5: classes named
  ``*TopKRouter`` / ``*TopkRouter``, returning ``(logits, weights, indices)``; Mixtral, Qwen2-MoE, Qwen3-MoE,
  OLMoE, DeepSeek-V2/V3, ...). The trace holds exactly the experts and gate weights the model used.
- ``logits``: ``output_router_logits=True``; experts are the top-k of ``softmax(logits)`` and weights are
  those probabilities, renormalised over the top-k when the config's ``norm_topk_prob`` is true (or absent,
  as in Mixtral). This matches softmax top-k routers (Mixtral, Qwen-MoE, OLMoE), not DeepSeek's grouped or
  sigmoid routers; use it for transformers versions whose routers are plain linear gates.

See ``docs/traces.md`` for recording a real model.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from common.errors import InputError
from common.progress import track
from moe.trace import Trace, expert_dtype

MODES = ("router", "logits")
TINY_FAMILIES = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe")
TINY_VOCAB = 97


def find_routers(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The top-k router modules of ``model`` in forward (layer) order: ``(qualified name, module)``."""
    return [
        (name, mod)
        for name, mod in model.named_modules()
        if type(mod).__name__.lower().endswith("topkrouter") and hasattr(mod, "weight")
    ]


def _num_experts(model: torch.nn.Module, routers: Sequence[tuple[str, torch.nn.Module]]) -> int:
    if routers:
        return int(routers[0][1].weight.shape[0])
    cfg = model.config
    for key in ("num_local_experts", "num_experts", "n_routed_experts"):
        if getattr(cfg, key, None):
            return int(getattr(cfg, key))
    raise InputError("recorder: cannot tell the number of experts (no router module, no config field)")


def _top_k(model: torch.nn.Module) -> int:
    k = getattr(model.config, "num_experts_per_tok", None)
    if not k:
        raise InputError("recorder: the model config has no 'num_experts_per_tok'")
    return int(k)


class _RouterHooks:
    """Collects ``(indices [tokens, k], weights [tokens, k])`` per router for one forward pass."""

    def __init__(self, routers: Sequence[tuple[str, torch.nn.Module]]) -> None:
        self.calls: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in routers]
        self.handles = [mod.register_forward_hook(self._hook(i)) for i, (_, mod) in enumerate(routers)]

    def _hook(self, i: int):  # noqa: ANN202 - a torch hook
        def hook(_mod: torch.nn.Module, _inp: Any, out: Any) -> None:
            if not (isinstance(out, tuple) and len(out) == 3):
                raise InputError(
                    f"recorder: router {i} returned {type(out).__name__}, expected (logits, weights, indices); "
                    "use mode='logits' with this transformers version"
                )
            self.calls[i].append((out[2].detach().to("cpu"), out[1].detach().float().to("cpu")))

        return hook

    def take(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        out = []
        for i, calls in enumerate(self.calls):
            if len(calls) != 1:
                raise InputError(
                    f"recorder: router {i} ran {len(calls)} times in one forward pass, expected 1"
                )
            out.append(calls[0])
        self.calls = [[] for _ in self.calls]
        return out

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _from_logits(
    model: torch.nn.Module, logits: Sequence[torch.Tensor], k: int
) -> list[tuple[torch.Tensor, ...]]:
    norm = bool(getattr(model.config, "norm_topk_prob", True))
    out = []
    for lg in logits:
        probs = torch.softmax(lg.detach().float().reshape(-1, lg.shape[-1]), dim=-1)
        w, idx = torch.topk(probs, k, dim=-1)
        if norm:
            w = w / w.sum(dim=-1, keepdim=True)
        out.append((idx.cpu(), w.cpu()))
    return out


def tiny_model(family: str, seed: int = 0) -> torch.nn.Module:
    """A tiny random-weight transformers MoE causal LM (no download), in eval mode, for tests and dry runs.

    Shape: vocabulary ``TINY_VOCAB`` (97), hidden size 32, 3 decoder layers, 8 routed experts; top-2 routing
    (top-3 for ``qwen3_moe``, whose config also sets ``head_dim=8``); ``qwen2_moe`` has a shared expert and
    renormalised top-k. Token ids 0, 1, 2 are pad, bos and eos. The weights depend only on ``seed``.

    Args:
        family: one of ``TINY_FAMILIES`` (``mixtral``, ``qwen2_moe``, ``qwen3_moe``, ``olmoe``).
        seed: torch seed for the random initialisation.
    """
    if family not in TINY_FAMILIES:
        raise InputError(f"tiny_model: family must be one of {TINY_FAMILIES}, got {family!r}")
    import transformers

    common = dict(
        vocab_size=TINY_VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(seed)
    if family == "mixtral":
        cfg = transformers.MixtralConfig(num_local_experts=8, num_experts_per_tok=2, **common)
        return transformers.MixtralForCausalLM(cfg).eval()
    if family == "qwen2_moe":
        cfg = transformers.Qwen2MoeConfig(
            num_experts=8, num_experts_per_tok=2, moe_intermediate_size=16, shared_expert_intermediate_size=16,
            norm_topk_prob=True, **common,
        )  # fmt: skip
        return transformers.Qwen2MoeForCausalLM(cfg).eval()
    if family == "qwen3_moe":
        cfg = transformers.Qwen3MoeConfig(
            num_experts=8, num_experts_per_tok=3, moe_intermediate_size=16, head_dim=8, **common
        )
        return transformers.Qwen3MoeForCausalLM(cfg).eval()
    cfg = transformers.OlmoeConfig(num_experts=8, num_experts_per_tok=2, **common)
    return transformers.OlmoeForCausalLM(cfg).eval()


def _batches(prompts: Iterable[Sequence[int] | torch.Tensor], size: int) -> Iterator[list[torch.Tensor]]:
    """Groups of up to ``size`` non-empty prompts (1-d long tensors), in order."""
    batch: list[torch.Tensor] = []
    for ids in prompts:
        x = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
        if x.numel() == 0:
            continue
        batch.append(x)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@torch.no_grad()
def _route_batch(
    model: torch.nn.Module,
    batch: list[Sequence[int] | torch.Tensor],
    hooks: _RouterHooks | None,
    k: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """One forward pass over a right-padded batch; the routing of its real tokens.

    Returns ``experts [real tokens, layers, k]`` (int64), ``weights`` (same shape) and the prompt lengths.
    """
    lens = torch.tensor([len(x) for x in batch])
    x = torch.zeros(len(batch), int(lens.max()), dtype=torch.long)
    for row, ids in enumerate(batch):
        x[row, : len(ids)] = torch.as_tensor(ids)
    keep = torch.arange(x.shape[1])[None, :] < lens[:, None]  # [batch, seq]: real tokens
    kwargs: dict[str, Any] = {"input_ids": x.to(device), "use_cache": False}
    if len(batch) > 1:
        kwargs["attention_mask"] = keep.long().to(device)
    if hooks is not None:
        model(**kwargs)
        per_layer = hooks.take()
    else:
        out = model(**kwargs, output_router_logits=True)
        per_layer = _from_logits(model, out.router_logits, k)
    idx = torch.stack([p[0] for p in per_layer], dim=1)  # [batch * seq, layers, k]
    w = torch.stack([p[1] for p in per_layer], dim=1)
    if idx.shape[0] != x.numel():
        raise InputError(f"recorder: router saw {idx.shape[0]} tokens for a batch of {tuple(x.shape)} tokens")
    flat_keep = keep.reshape(-1)
    return idx[flat_keep], w[flat_keep], [int(n) for n in lens]


def record_trace(
    model: torch.nn.Module,
    prompts: Iterable[Sequence[int] | torch.Tensor],
    mode: str = "router",
    meta: dict[str, Any] | None = None,
    total: int | None = None,
    batch_size: int = 1,
) -> Trace:
    """Run ``model`` over each prompt (token ids) and record every MoE layer's routing.

    Args:
        model: a transformers causal LM (or base model) with MoE layers, in eval mode on any device.
        prompts: token id sequences, one forward pass each (no padding, so no pad token is recorded).
        mode: ``router`` (hooks on the router modules) or ``logits`` (``output_router_logits``).
        meta: extra provenance for ``Trace.meta`` (model name, dataset, ...).
        total: number of prompts, for the progress display.
        batch_size: prompts per forward pass. Above 1 the prompts of a batch are right-padded and masked
            (``attention_mask``); the padding rows are dropped, so the trace holds the same tokens as with
            ``batch_size=1`` (the routing may differ only where float rounding of batched kernels flips a
            near-tie).

    Returns:
        A validated ``Trace``: ``experts [tokens, moe_layers, top_k]``, ``weights`` (gate weights, float32),
        ``prompt_offsets``; ``meta`` holds the router module names (``routers``) and the mode.
    """
    if mode not in MODES:
        raise InputError(f"recorder: mode must be one of {MODES}, got {mode!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"recorder: batch_size must be a positive integer, got {batch_size!r}")
    model.eval()
    routers = find_routers(model)
    if mode == "router" and not routers:
        raise InputError(
            f"recorder: no top-k router module found in {type(model).__name__}; use mode='logits' or a "
            "transformers MoE model (Mixtral, Qwen2/3-MoE, OLMoE, DeepSeek)"
        )
    e, k = _num_experts(model, routers), _top_k(model)
    device = next(model.parameters()).device
    hooks = _RouterHooks(routers) if mode == "router" else None
    experts: list[np.ndarray] = []
    weights: list[np.ndarray] = []
    lengths: list[int] = []
    try:
        for batch in _batches(track(prompts, total=total, description="recording routing"), batch_size):
            idx, w, lens = _route_batch(model, batch, hooks, k, device)
            experts.append(idx.numpy().astype(expert_dtype(e)))
            weights.append(w.numpy().astype(np.float32))
            lengths.extend(lens)
    finally:
        if hooks is not None:
            hooks.remove()
    if not lengths:
        raise InputError("recorder: no prompt with at least one token")
    info = {
        "source": "recorder",
        "model_class": type(model).__name__,
        "mode": mode,
        "routers": [name for name, _ in routers],
        **(meta or {}),
    }
    trace = Trace(
        experts=np.concatenate(experts),
        num_experts=e,
        weights=np.concatenate(weights),
        prompt_offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        meta=info,
        slot_order="score",  # routers return their top-k sorted by gate score, highest first
    )
    return trace.validate("recorded trace")


def record_texts(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    max_tokens_per_prompt: int | None = None,
    mode: str = "router",
    meta: dict[str, Any] | None = None,
    batch_size: int = 1,
) -> Trace:
    """Tokenise each text (``tokenizer(text)['input_ids']``, truncated to ``max_tokens_per_prompt``) and
    record its routing with ``record_trace`` (``batch_size`` prompts per forward pass)."""

    def ids() -> Iterable[list[int]]:
        for text in texts:
            tok = tokenizer(
                text, truncation=max_tokens_per_prompt is not None, max_length=max_tokens_per_prompt
            )
            yield list(tok["input_ids"])

    return record_trace(model, ids(), mode=mode, meta=meta, total=len(texts), batch_size=batch_size)
