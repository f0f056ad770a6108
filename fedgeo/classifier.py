"""A linear softmax classifier in torch: model factory, seeded training with Adam, evaluation.

Deterministic on CPU: the weights are initialised from ``seed`` and the minibatch order comes from a
``torch.Generator`` seeded with ``seed``, so the same data, settings and seed give identical weights.
The loss is the cross-entropy of the logits (no softmax before the loss). The federated strategies reuse
these pieces: ``make_classifier`` for the global model, ``train_epochs`` for a client's local update.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from common.config import schema
from common.errors import ConfigError, InputError


@schema("train", "default")
@dataclass(frozen=True)
class TrainSettings:
    """Client training (``train`` in ``conf/fed.yaml``): Adam on cross-entropy in ``mode=local``; in
    ``mode=fl`` every round's local update takes ``fl.local_epochs`` passes of the strategy's optimiser.

    Attributes:
        epochs: passes over the local set (``mode=local``). batch_size: minibatch size.
        lr: learning rate (Adam in ``mode=local``). weight_decay: Adam's L2 weight decay.
        min_steps: ``mode=local``: at least this many Adam steps per client (small sets get more passes).
    """

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    min_steps: int = 500

    def __post_init__(self) -> None:
        _check_train(self.epochs, self.batch_size, self.lr)
        if self.min_steps < 0:
            raise ConfigError("train.min_steps", f"expected a non-negative integer, got {self.min_steps!r}")


def make_classifier(dim: int, num_classes: int, seed: int = 0) -> nn.Linear:
    """A linear layer ``d -> C`` (float32) with PyTorch's default initialisation drawn from ``seed``."""
    if dim < 1 or num_classes < 2:
        raise InputError(f"classifier needs dim >= 1 and >= 2 classes, got {dim} and {num_classes}")
    gen = torch.Generator().manual_seed(int(seed))
    model = nn.Linear(dim, num_classes)
    bound = 1.0 / dim**0.5
    with torch.no_grad():
        model.weight.uniform_(-bound, bound, generator=gen)
        model.bias.uniform_(-bound, bound, generator=gen)
    return model


def _check_train(epochs: int, batch_size: int, lr: float) -> None:
    for key, v in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if key == "epochs" else 1):
            raise ConfigError(f"train.{key}", f"expected a positive integer, got {v!r}")
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not lr > 0:
        raise ConfigError("train.lr", f"expected a positive number, got {lr!r}")


def train_epochs(
    model: nn.Module,
    X: np.ndarray,
    y: np.ndarray,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    weight_decay: float = 0.0,
    min_steps: int = 0,
) -> list[float]:
    """Train ``model`` in place with Adam on cross-entropy for ``epochs`` passes over ``(X, y)``.

    ``min_steps`` raises the number of passes until at least that many optimiser steps are taken, so that a
    small local set (no augmentation) is trained as far as a large one and comparisons are not confounded by
    under-training: passes = ``max(epochs, ceil(min_steps / ceil(n / batch_size)))``.

    Args:
        X: ``float32 [n, d]``. y: ``int [n]`` class ids.
        batch_size: minibatch size (the last batch may be smaller). lr: Adam's learning rate.
        seed: seeds the minibatch order.

    Returns:
        The sample-weighted mean training loss of every pass (``[passes]``). With ``n = 0`` nothing is
        trained and the losses are empty.
    """
    _check_train(epochs, batch_size, lr)
    if isinstance(min_steps, bool) or not isinstance(min_steps, int) or min_steps < 0:
        raise ConfigError("train.min_steps", f"expected a non-negative integer, got {min_steps!r}")
    Xt = torch.as_tensor(np.ascontiguousarray(X, dtype=np.float32))
    yt = torch.as_tensor(np.asarray(y, dtype=np.int64))
    n = Xt.shape[0]
    if n == 0:
        return []
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(int(seed))
    losses: list[float] = []
    model.train()
    steps_per_epoch = -(-n // batch_size)
    epochs = max(epochs, -(-min_steps // steps_per_epoch))
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(Xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * idx.numel()
        losses.append(total / n)
    return losses


@torch.no_grad()
def predict(model: nn.Module, X: np.ndarray, batch_size: int = 8192) -> np.ndarray:
    """Predicted class ids ``int64 [n]`` for ``X`` (``[n, d]``)."""
    model.eval()
    Xt = torch.as_tensor(np.ascontiguousarray(X, dtype=np.float32))
    out = [model(Xt[s : s + batch_size]).argmax(dim=1) for s in range(0, Xt.shape[0], batch_size)]
    return torch.cat(out).numpy().astype(np.int64) if out else np.empty(0, dtype=np.int64)


def evaluate(model: nn.Module, X: np.ndarray, y: np.ndarray) -> float:
    """Accuracy (a fraction in 0..1) of ``model`` on ``(X, y)``; NaN for an empty set."""
    y = np.asarray(y)
    if y.size == 0:
        return float("nan")
    return float(np.mean(predict(model, X) == y))
