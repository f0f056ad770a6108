"""Model parameters as arrays, and the local SGD loop every strategy's client update runs.

Parameters travel as ``dict[str, np.ndarray]`` (the model's ``state_dict`` names, ``float32``), which is
what Flower's ``ArrayRecord`` carries. ``local_sgd`` is plain minibatch SGD (optionally with momentum) on
cross-entropy plus a strategy's extra loss, with a strategy's gradient correction applied before each step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

Arrays = dict[str, np.ndarray]
ExtraLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
GradHook = Callable[[nn.Module], None]


def get_params(model: nn.Module) -> Arrays:
    """The model's parameters as ``float32`` numpy copies, by ``state_dict`` name."""
    return {k: v.detach().cpu().numpy().astype(np.float32, copy=True) for k, v in model.state_dict().items()}


def set_params(model: nn.Module, params: Arrays) -> nn.Module:
    """Load ``params`` into ``model`` (same names and shapes) and return it."""
    model.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in params.items()}, strict=True)
    return model


def weighted_mean(arrays: list[Arrays], weights: list[float]) -> Arrays:
    """``sum_k w_k a_k / sum_k w_k`` per name (float64 accumulation, float32 result)."""
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    return {k: sum(wk * a[k].astype(np.float64) for wk, a in zip(w, arrays, strict=True)).astype(np.float32)
            for k in arrays[0]}  # fmt: skip


@dataclass(frozen=True)
class LocalOpts:
    """One client's local update: ``epochs`` passes over its set, or exactly ``steps`` SGD steps when
    ``steps > 0`` (passes reshuffled, the last one cut short); minibatches of ``batch_size``, SGD
    ``lr``/``momentum``, ``seed`` for the batch order."""

    epochs: int = 1
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.0
    seed: int = 0
    steps: int = 0


def minibatches(n: int, opts: LocalOpts) -> Iterator[torch.Tensor]:
    """Row indices (``int64 [<= batch_size]``) of every SGD step of one local update over ``n`` rows:
    ``opts.epochs`` shuffled passes, or exactly ``opts.steps`` batches when ``opts.steps > 0``."""
    gen = torch.Generator().manual_seed(int(opts.seed))
    taken, epoch = 0, 0
    while (taken < opts.steps) if opts.steps else (epoch < opts.epochs):
        epoch += 1
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, opts.batch_size):
            if opts.steps and taken == opts.steps:
                return
            taken += 1
            yield order[start : start + opts.batch_size]


def mean_loss(model: nn.Module, X: np.ndarray, y: np.ndarray, batch: int = 4096) -> float:
    """Mean cross-entropy of ``model`` on ``(X float32 [n, d], y int [n])`` (nats; NaN when ``n = 0``)."""
    if len(y) == 0:
        return float("nan")
    model.eval()
    total = 0.0
    with torch.no_grad():
        for s in range(0, len(y), batch):
            xb = torch.as_tensor(np.ascontiguousarray(X[s : s + batch], dtype=np.float32))
            yb = torch.as_tensor(np.asarray(y[s : s + batch], dtype=np.int64))
            total += float(nn.functional.cross_entropy(model(xb), yb, reduction="sum"))
    return total / len(y)


def local_sgd(
    model: nn.Module,
    X: np.ndarray,
    y: np.ndarray,
    opts: LocalOpts,
    extra_loss: ExtraLoss | None = None,
    grad_hook: GradHook | None = None,
) -> dict[str, float]:
    """Train ``model`` in place on ``(X float32 [n, d], y int [n])``, on the batches of ``minibatches``.

    Every step: ``loss = CE(model(xb), yb) + extra_loss(model, xb, yb, logits)``, backward, then
    ``grad_hook(model)`` (e.g. SCAFFOLD's ``+ c - c_i``), then the SGD step.

    Returns:
        ``{"steps": K, "loss": mean CE + extra over the steps}``.
    """
    Xt = torch.as_tensor(np.ascontiguousarray(X, dtype=np.float32))
    yt = torch.as_tensor(np.asarray(y, dtype=np.int64))
    n = Xt.shape[0]
    if n == 0:
        return {"steps": 0.0, "loss": float("nan")}
    opt = torch.optim.SGD(model.parameters(), lr=opts.lr, momentum=opts.momentum)
    model.train()
    steps, total = 0, 0.0
    for idx in minibatches(n, opts):
        xb, yb = Xt[idx], yt[idx]
        opt.zero_grad(set_to_none=True)
        logits = model(xb)
        loss = nn.functional.cross_entropy(logits, yb)
        if extra_loss is not None:
            loss = loss + extra_loss(model, xb, yb, logits)
        loss.backward()
        if grad_hook is not None:
            grad_hook(model)
        opt.step()
        steps += 1
        total += float(loss.detach())
    return {"steps": float(steps), "loss": total / max(steps, 1)}
