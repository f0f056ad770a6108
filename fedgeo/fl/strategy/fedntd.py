"""FedNTD (Lee et al., 2022): not-true distillation from the global model; FedAvg aggregation.

Local loss ``CE + beta * tau^2 * KL(q_g || q)``, where ``q`` and ``q_g`` are the softmax over the *not-true*
classes of the local and global logits divided by ``tau`` (the true class's logit removed).
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


def not_true(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``[n, C-1]``: each row without its true class's entry."""
    n, C = logits.shape
    keep = torch.ones(n, C, dtype=torch.bool)
    keep[torch.arange(n), y] = False
    return logits[keep].reshape(n, C - 1)


def ntd_loss(logits: torch.Tensor, global_logits: torch.Tensor, y: torch.Tensor, tau: float) -> torch.Tensor:
    """``tau^2 * KL(softmax(nt(global)/tau) || softmax(nt(local)/tau))``, mean over rows."""
    log_q = nn.functional.log_softmax(not_true(logits, y) / tau, dim=1)
    log_qg = nn.functional.log_softmax(not_true(global_logits, y) / tau, dim=1)
    return tau**2 * (log_qg.exp() * (log_qg - log_q)).sum(dim=1).mean()


@schema("strategy", "fedntd")
@dataclass(frozen=True)
class FedNTD(FLStrategy):
    """``strategy=fedntd``; ``beta``: weight of the distillation term; ``tau``: its temperature."""

    name = "fedntd"
    beta: float = 1.0
    tau: float = 1.0

    def __post_init__(self) -> None:
        if self.beta < 0 or not self.tau > 0:
            raise ConfigError("beta", f"expected beta >= 0 and tau > 0, got {self.beta!r}, {self.tau!r}")

    def client_update(self, model, global_params, X, y, state, payload, opts: LocalOpts):
        glob = set_params(copy.deepcopy(model), global_params).eval()
        set_params(model, global_params)

        def ntd(m: nn.Module, xb: torch.Tensor, yb: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                gl = glob(xb)
            return self.beta * ntd_loss(logits, gl, yb, self.tau)

        metrics = local_sgd(model, X, y, opts, extra_loss=ntd)
        return get_params(model), {}, state, metrics
