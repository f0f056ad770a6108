"""SCAFFOLD (Karimireddy et al., 2020), option II, with server and client control variates.

Client i (K local SGD steps of size lr from the global ``x``): every step uses ``g(y) + c - c_i``; then
``c_i+ = c_i - c + (x - y) / (K lr)`` and it sends ``y`` and ``dc_i = c_i+ - c_i``.
Server: ``x <- x + lr_global * mean_i(y_i - x)``, ``c <- c + (|S| / N) * mean_i(dc_i)`` (N: all clients).
Both controls start at 0.
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


@schema("strategy", "scaffold")
@dataclass(frozen=True)
class Scaffold(FLStrategy):
    """``strategy=scaffold``; ``lr_global``: the server step on the mean model difference (1 = average).

    Local updates are plain SGD (``fl.momentum`` must be 0: the control update assumes it).
    """

    name = "scaffold"
    lr_global: float = 1.0

    def __post_init__(self) -> None:
        if not self.lr_global > 0:
            raise ConfigError("lr_global", f"expected a positive number, got {self.lr_global!r}")

    def init_server_state(self, params: Arrays) -> Arrays:
        return {f"c.{k}": np.zeros_like(v) for k, v in params.items()}

    def payload(self, server_state: Arrays) -> Arrays:
        return dict(server_state)

    def client_update(self, model, global_params, X, y, state, payload, opts: LocalOpts):
        if opts.momentum:
            raise ConfigError("fl.momentum", "SCAFFOLD's control update assumes plain SGD: set fl.momentum=0")
        set_params(model, global_params)
        names = [n for n, _ in model.named_parameters()]
        c = {n: torch.as_tensor(payload[f"c.{n}"]) for n in names}
        ci = {n: torch.as_tensor(state.get(f"ci.{n}", np.zeros_like(global_params[n]))) for n in names}
        corr = {n: c[n] - ci[n] for n in names}

        def hook(m: nn.Module) -> None:
            for n, p in m.named_parameters():
                if p.grad is not None:
                    p.grad.add_(corr[n])

        metrics = local_sgd(model, X, y, opts, grad_hook=hook)
        new = get_params(model)
        K = max(metrics["steps"], 1.0)
        extras, new_state = {}, {}
        for n in names:
            ci_new = ci[n].numpy() - c[n].numpy() + (global_params[n] - new[n]) / (K * opts.lr)
            extras[f"dc.{n}"] = (ci_new - ci[n].numpy()).astype(np.float32)
            new_state[f"ci.{n}"] = ci_new.astype(np.float32)
        return new, extras, new_state, metrics

    def aggregate(self, global_params, results: list[ClientResult], server_state, num_clients):
        S = len(results)
        new = {
            k: (g + self.lr_global * np.mean([r.params[k] - g for r in results], axis=0)).astype(np.float32)
            for k, g in global_params.items()
        }
        state = {
            f"c.{k}": (server_state[f"c.{k}"] + (S / num_clients) * np.mean([r.extras[f"dc.{k}"] for r in results], axis=0)).astype(np.float32)
            for k in global_params
        }  # fmt: skip
        return new, state
