"""The ``model`` options of the federated runner: classifiers on embeddings, as torch modules.

Every model is a ``Classifier``: ``represent(x)`` gives the representation ``z`` (``[n, r]``) that MOON and
FedProto work on, ``head(z)`` the logits (``[n, C]``). ``model=linear`` (default): one linear layer, whose
representation is its output (the logits); ``model=mlp``: ``Linear(d, hidden) -> ReLU`` as the
representation, then ``Linear(hidden, C)``. A new model is one ``@schema("model", name)`` subclass of
``ClassifierModel`` plus its YAML; ``runners.fed`` refuses any ``model`` option that is not one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from common.config import schema
from common.errors import ConfigError
from fedgeo.classifier import make_classifier


class Classifier(nn.Module):
    """``head(body(x))``; ``represent`` exposes ``body(x)``."""

    def __init__(self, body: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.head = head

    def represent(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@dataclass(frozen=True)
class ClassifierModel:
    """Base of the ``model`` options the federated runner accepts."""

    name: str = ""

    def make(self, dim: int, num_classes: int, seed: int) -> Classifier:
        """A fresh model for ``dim``-dimensional inputs and ``num_classes`` classes, initialised from ``seed``."""
        raise NotImplementedError(f"{type(self).__name__}.make")


@schema("model", "linear")
@dataclass(frozen=True)
class LinearModel(ClassifierModel):
    """``model=linear``: the linear softmax classifier (``fedgeo.classifier.make_classifier``)."""

    name: str = "linear"

    def make(self, dim: int, num_classes: int, seed: int) -> Classifier:
        return Classifier(make_classifier(dim, num_classes, seed), nn.Identity())


@schema("model", "mlp")
@dataclass(frozen=True)
class MLPModel(ClassifierModel):
    """``model=mlp``: ``Linear(d, hidden) -> ReLU -> Linear(hidden, C)``."""

    name: str = "mlp"
    hidden: int = 256

    def __post_init__(self) -> None:
        if self.hidden < 1:
            raise ConfigError("hidden", f"expected a positive integer, got {self.hidden!r}")

    def make(self, dim: int, num_classes: int, seed: int) -> Classifier:
        gen = torch.Generator().manual_seed(int(seed))
        first, last = nn.Linear(dim, self.hidden), nn.Linear(self.hidden, num_classes)
        with torch.no_grad():
            for layer in (first, last):
                bound = 1.0 / layer.in_features**0.5
                layer.weight.uniform_(-bound, bound, generator=gen)
                layer.bias.uniform_(-bound, bound, generator=gen)
        return Classifier(nn.Sequential(first, nn.ReLU()), last)
