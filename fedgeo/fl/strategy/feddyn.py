"""FedDyn (Acar et al., 2021): dynamic regularisation with per-client gradient state and server state h.

Client k from the global ``w``: minimises ``L_k(v) - <g_k, v> + alpha/2 ||v - w||^2`` by local SGD, then
``g_k <- g_k - alpha (v_k - w)`` (``g_k`` starts at 0) and sends ``v_k``.
Server (m = all clients, P = this round's): ``h <- h - alpha/m sum_{k in P} (v_k - w)``,
``w <- mean_{k in P} v_k - h / alpha``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from common.config import schema
from common.errors import ConfigError
from fedgeo.fl.strategy.base import ClientResult, FLStrategy
from fedgeo.fl.training import Arrays, LocalOpts, get_params, local_sgd, set_params


@schema("strategy", "feddyn")
@dataclass(frozen=True)
class FedDyn(FLStrategy):
    """``strategy=feddyn``; ``alpha``: the regularisation weight (> 0)."""

    name = "feddyn"
    alpha: float = 0.01

    def __post_init__(self) -> None:
        if not self.alpha > 0:
            raise ConfigError("alpha", f"expected a positive number, got {self.alpha!r}")

    def init_server_state(self, params: Arrays) -> Arrays:
        return {f"h.{k}": np.zeros_like(v) for k, v in params.items()}

    def client_update(self, model, global_params, X, y, state, payload, opts: LocalOpts):
        set_params(model, global_params)
        names = [n for n, _ in model.named_parameters()]
        w = {n: torch.as_tensor(global_params[n]) for n in names}
        g = {n: torch.as_tensor(state.get(f"g.{n}", np.zeros_like(global_params[n]))) for n in names}

        def dyn(m: nn.Module, *_: torch.Tensor) -> torch.Tensor:
            terms = [
                -(g[n] * p).sum() + 0.5 * self.alpha * ((p - w[n]) ** 2).sum()
                for n, p in m.named_parameters()
            ]
            return torch.stack(terms).sum()

        metrics = local_sgd(model, X, y, opts, extra_loss=dyn)
        new = get_params(model)
        new_state = {
            f"g.{n}": (g[n].numpy() - self.alpha * (new[n] - global_params[n])).astype(np.float32)
            for n in names
        }
        return new, {}, new_state, metrics

    def aggregate(self, global_params, results: list[ClientResult], server_state, num_clients):
        new, state = {}, {}
        for k, wk in global_params.items():
            h = server_state[f"h.{k}"] - self.alpha / num_clients * np.sum(
                [r.params[k] - wk for r in results], axis=0
            )
            state[f"h.{k}"] = h.astype(np.float32)
            new[k] = (np.mean([r.params[k] for r in results], axis=0) - h / self.alpha).astype(np.float32)
        return new, state
