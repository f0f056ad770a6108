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

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from common.errors import InputError
from common.progress import track
from moe.trace import Trace, expert_dtype

MODES = ("router", "logits")


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


@torch.no_grad()
def record_trace(
    model: torch.nn.Module,
    prompts: Iterable[Sequence[int] | torch.Tensor],
    mode: str = "router",
    meta: dict[str, Any] | None = None,
    total: int | None = None,
) -> Trace:
    """Run ``model`` over each prompt (token ids) and record every MoE layer's routing.

    Args:
        model: a transformers causal LM (or base model) with MoE layers, in eval mode on any device.
        prompts: token id sequences, one forward pass each (no padding, so no pad token is recorded).
        mode: ``router`` (hooks on the router modules) or ``logits`` (``output_router_logits``).
        meta: extra provenance for ``Trace.meta`` (model name, dataset, ...).
        total: number of prompts, for the progress display.

    Returns:
        A validated ``Trace``: ``experts [tokens, moe_layers, top_k]``, ``weights`` (gate weights, float32),
        ``prompt_offsets``; ``meta`` holds the router module names (``routers``) and the mode.
    """
    if mode not in MODES:
        raise InputError(f"recorder: mode must be one of {MODES}, got {mode!r}")
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
        for ids in track(prompts, total=total, description="recording routing"):
            x = torch.as_tensor(ids, dtype=torch.long).reshape(1, -1).to(device)
            if x.shape[1] == 0:
                continue
            if hooks is not None:
                model(input_ids=x, use_cache=False)
                per_layer = hooks.take()
            else:
                out = model(input_ids=x, use_cache=False, output_router_logits=True)
                per_layer = _from_logits(model, out.router_logits, k)
            idx = torch.stack([p[0] for p in per_layer], dim=1)  # [tokens, layers, k]
            w = torch.stack([p[1] for p in per_layer], dim=1)
            if idx.shape[0] != x.shape[1]:
                raise InputError(
                    f"recorder: router saw {idx.shape[0]} tokens for a {x.shape[1]}-token prompt"
                )
            experts.append(idx.numpy().astype(expert_dtype(e)))
            weights.append(w.numpy().astype(np.float32))
            lengths.append(int(x.shape[1]))
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
    )
    return trace.validate("recorded trace")


def record_texts(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    max_tokens_per_prompt: int | None = None,
    mode: str = "router",
    meta: dict[str, Any] | None = None,
) -> Trace:
    """Tokenise each text (``tokenizer(text)['input_ids']``, truncated to ``max_tokens_per_prompt``) and
    record its routing with ``record_trace``."""

    def ids() -> Iterable[list[int]]:
        for text in texts:
            tok = tokenizer(
                text, truncation=max_tokens_per_prompt is not None, max_length=max_tokens_per_prompt
            )
            yield list(tok["input_ids"])

    return record_trace(model, ids(), mode=mode, meta=meta, total=len(texts))
