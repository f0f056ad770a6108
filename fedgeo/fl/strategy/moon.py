"""MOON (Li, He and Song, 2021): model-contrastive loss on the representation; FedAvg aggregation.

Local loss ``CE + mu * l_con`` with, per sample, ``z`` the local representation, ``z_g`` the global model's
and ``z_p`` the client's previous local model's (the global model in a client's first round):
``l_con = -log(exp(cos(z, z_g)/tau) / (exp(cos(z, z_g)/tau) + exp(cos(z, z_p)/tau)))``.
The client keeps its model after training as state.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from common.config import schema
from common.errors import ConfigError
from fedgeo.fl.strategy.base import FLStrategy
from fedgeo.fl.training import LocalOpts, get_params, local_sgd, set_params


def contrastive_loss(z: torch.Tensor, z_glob: torch.Tensor, z_prev: torch.Tensor, tau: float) -> torch.Tensor:
    """Mean MOON loss over rows of ``[n, r]`` representations."""
    pos = nn.functional.cosine_similarity(z, z_glob, dim=1) / tau
    neg = nn.functional.cosine_similarity(z, z_prev, dim=1) / tau
    return (torch.logsumexp(torch.stack([pos, neg], dim=1), dim=1) - pos).mean()


@schema("strategy", "moon")
@dataclass(frozen=True)
class Moon(FLStrategy):
    """``strategy=moon``; ``mu``: weight of the contrastive loss; ``tau``: its temperature."""

    name = "moon"
    mu: float = 1.0
    tau: float = 0.5

    def __post_init__(self) -> None:
        if self.mu < 0 or not self.tau > 0:
            raise ConfigError("mu", f"expected mu >= 0 and tau > 0, got {self.mu!r}, {self.tau!r}")

    def client_update(self, model, global_params, X, y, state, payload, opts: LocalOpts):
        glob = set_params(copy.deepcopy(model), global_params).eval()
        prev = set_params(
            copy.deepcopy(model), {k[5:]: v for k, v in state.items()} if state else global_params
        ).eval()
        set_params(model, global_params)

        def con(m: nn.Module, xb: torch.Tensor, *_: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                zg, zp = glob.represent(xb), prev.represent(xb)
            return self.mu * contrastive_loss(m.represent(xb), zg, zp, self.tau)

        metrics = local_sgd(model, X, y, opts, extra_loss=con)
        new = get_params(model)
        return new, {}, {f"prev.{k}": v for k, v in new.items()}, metrics
