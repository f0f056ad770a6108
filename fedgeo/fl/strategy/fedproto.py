"""FedProto (Tan et al., 2022): class prototypes of the representation, shared through the server.

Client: local loss ``CE + lam * mean ||z - P[y]||^2`` over samples whose class has a global prototype
``P`` (mean squared error per dimension, as the paper's code); after training it sends its class means of
``z`` and their counts. Server: ``P[c]`` = count-weighted mean of the clients' means of class c. The
original trains no global model; here the weights are also averaged (FedAvg), because the suite scores a
global model and every client starts each round from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from common.config import schema
from common.errors import ConfigError
from fedgeo.fl.strategy.base import ClientResult, FLStrategy
from fedgeo.fl.training import LocalOpts, get_params, local_sgd, set_params, weighted_mean


@torch.no_grad()
def class_means(
    model: nn.Module, X: np.ndarray, y: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(means float32 [C, r], counts float32 [C])`` of ``model.represent`` per class."""
    z = model.represent(torch.as_tensor(np.asarray(X, dtype=np.float32))).numpy().astype(np.float64)
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)
    sums = np.zeros((num_classes, z.shape[1]))
    np.add.at(sums, y, z)
    return (sums / np.maximum(counts, 1)[:, None]).astype(np.float32), counts.astype(np.float32)


@schema("strategy", "fedproto")
@dataclass(frozen=True)
class FedProto(FLStrategy):
    """``strategy=fedproto``; ``lam``: weight of the prototype term."""

    name = "fedproto"
    lam: float = 1.0

    def __post_init__(self) -> None:
        if self.lam < 0:
            raise ConfigError("lam", f"expected a number >= 0, got {self.lam!r}")

    def payload(self, server_state):
        return dict(server_state)

    def client_update(self, model, global_params, X, y, state, payload, opts: LocalOpts):
        set_params(model, global_params)
        C = model(torch.zeros(1, X.shape[1])).shape[1]
        extra = None
        if "protos" in payload:
            P = torch.as_tensor(payload["protos"])
            has = torch.as_tensor(payload["proto_counts"] > 0)

            def extra(m: nn.Module, xb: torch.Tensor, yb: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
                mask = has[yb]
                if not mask.any():
                    return torch.zeros(())
                z = m.represent(xb[mask])
                return self.lam * nn.functional.mse_loss(z, P[yb[mask]])

        metrics = local_sgd(model, X, y, opts, extra_loss=extra)
        means, counts = class_means(model, X, np.asarray(y, dtype=np.int64), C)
        return get_params(model), {"proto_means": means, "proto_counts": counts}, state, metrics

    def aggregate(self, global_params, results: list[ClientResult], server_state, num_clients):
        new = weighted_mean([r.params for r in results], [r.num_examples for r in results])
        counts = np.sum([r.extras["proto_counts"] for r in results], axis=0)
        sums = np.sum([r.extras["proto_means"] * r.extras["proto_counts"][:, None] for r in results], axis=0)
        protos = (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)
        return new, {"protos": protos, "proto_counts": counts.astype(np.float32)}
