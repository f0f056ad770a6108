"""FedProx (Li et al., 2020): local loss ``CE + mu/2 ||w - w_global||^2``; FedAvg aggregation."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from common.config import schema
from common.errors import ConfigError
from fedgeo.fl.strategy.base import FLStrategy
from fedgeo.fl.training import LocalOpts, get_params, local_sgd, set_params


@schema("strategy", "fedprox")
@dataclass(frozen=True)
class FedProx(FLStrategy):
    """``strategy=fedprox``; ``mu``: the proximal weight (>= 0; 0 is FedAvg)."""

    name = "fedprox"
    mu: float = 0.01

    def __post_init__(self) -> None:
        if self.mu < 0:
            raise ConfigError("mu", f"expected a number >= 0, got {self.mu!r}")

    def client_update(self, model, global_params, X, y, state, payload, opts: LocalOpts):
        set_params(model, global_params)
        anchor = [p.detach().clone() for p in model.parameters()]

        def prox(m: nn.Module, *_: torch.Tensor) -> torch.Tensor:
            return (
                0.5 * self.mu * sum(((p - a) ** 2).sum() for p, a in zip(m.parameters(), anchor, strict=True))
            )

        metrics = local_sgd(model, X, y, opts, extra_loss=prox)
        return get_params(model), {}, state, metrics
