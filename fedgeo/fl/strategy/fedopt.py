"""FedAdam and FedYogi (Reddi et al., "Adaptive Federated Optimization", ICLR 2021, Algorithm 2).

Clients run FedAvg's local update from the global model ``x``. Server, with the clients' models ``w_i``:

- ``delta = (1/|S|) sum_i (w_i - x)`` (the unweighted mean over the round's clients, as published);
- ``m = beta_1 m + (1 - beta_1) delta``;
- FedAdam: ``v = beta_2 v + (1 - beta_2) delta^2``; FedYogi: ``v = v - (1 - beta_2) delta^2 sign(v - delta^2)``;
- ``x = x + eta m / (sqrt(v) + tau)``,

with ``m`` starting at 0 and ``v`` at ``tau^2`` (the paper's ``v_{-1} >= tau^2``), no bias correction.
(Flower's own ``FedAdam`` example-weights ``delta``, starts ``v`` at 0 and rescales ``eta`` by Adam's bias
correction, ``sqrt(1 - beta_2^(t+1)) / (1 - beta_1^(t+1))``, 0.74 in round 1 at the defaults; this
module follows the paper.) ``m`` and ``v`` are the server's state, in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.config import schema
from common.errors import ConfigError
from fedgeo.fl.strategy.base import ClientResult, FLStrategy
from fedgeo.fl.training import Arrays


@dataclass(frozen=True)
class _FedOpt(FLStrategy):
    """Shared options: server learning rate ``eta``, moment decays ``beta_1``, ``beta_2``, adaptivity ``tau``."""

    eta: float = 0.1
    beta_1: float = 0.9
    beta_2: float = 0.99
    tau: float = 1e-3

    def __post_init__(self) -> None:
        for key in ("eta", "tau"):
            if not getattr(self, key) > 0:
                raise ConfigError(key, f"expected a positive number, got {getattr(self, key)!r}")
        for key in ("beta_1", "beta_2"):
            if not 0 <= getattr(self, key) < 1:
                raise ConfigError(key, f"expected a number in [0, 1), got {getattr(self, key)!r}")

    def init_server_state(self, params: Arrays) -> Arrays:
        state = {f"m.{k}": np.zeros(v.shape) for k, v in params.items()}
        return state | {f"v.{k}": np.full(v.shape, self.tau**2) for k, v in params.items()}

    def second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def aggregate(
        self, global_params: Arrays, results: list[ClientResult], server_state: Arrays, num_clients: int
    ) -> tuple[Arrays, Arrays]:
        new, state = {}, {}
        for k, x in global_params.items():
            x64 = x.astype(np.float64)
            delta = np.mean([r.params[k].astype(np.float64) - x64 for r in results], axis=0)
            m = self.beta_1 * server_state[f"m.{k}"] + (1 - self.beta_1) * delta
            v = self.second_moment(server_state[f"v.{k}"], delta**2)
            new[k] = (x64 + self.eta * m / (np.sqrt(v) + self.tau)).astype(np.float32)
            state[f"m.{k}"], state[f"v.{k}"] = m, v
        return new, state


@schema("strategy", "fedadam")
@dataclass(frozen=True)
class FedAdam(_FedOpt):
    """``strategy=fedadam``: ``v = beta_2 v + (1 - beta_2) delta^2``."""

    name = "fedadam"

    def second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        return self.beta_2 * v + (1 - self.beta_2) * d2


@schema("strategy", "fedyogi")
@dataclass(frozen=True)
class FedYogi(_FedOpt):
    """``strategy=fedyogi``: ``v = v - (1 - beta_2) delta^2 sign(v - delta^2)``; default ``eta`` 0.01."""

    name = "fedyogi"
    eta: float = 0.01

    def second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        return v - (1 - self.beta_2) * d2 * np.sign(v - d2)
