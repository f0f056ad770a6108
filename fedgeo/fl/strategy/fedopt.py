"""FedAdam and FedYogi (Reddi et al., 2021) as Flower implements them (``flwr.serverapp.strategy``).

Clients run FedAvg's local update; the server's step on the averaged model difference is Flower's own
``FedAdam``/``FedYogi.aggregate_train`` (``fedgeo.fl.server_app`` derives its strategy from that class).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from common.config import schema
from common.errors import ConfigError
from fedgeo.fl.strategy.base import FLStrategy


@dataclass(frozen=True)
class _FedOpt(FLStrategy):
    eta: float = 0.1
    beta_1: float = 0.9
    beta_2: float = 0.99
    tau: float = 1e-3

    def __post_init__(self) -> None:
        if not self.eta > 0 or not self.tau > 0 or not (0 <= self.beta_1 < 1 and 0 <= self.beta_2 < 1):
            raise ConfigError("eta", "expected eta > 0, tau > 0 and beta_1, beta_2 in [0, 1)")

    def flower_kwargs(self) -> dict[str, Any]:
        return {"eta": self.eta, "beta_1": self.beta_1, "beta_2": self.beta_2, "tau": self.tau}

    def aggregate(self, global_params, results, server_state, num_clients):
        raise NotImplementedError(f"{self.name} is aggregated by Flower's {self.flower_class}")


@schema("strategy", "fedadam")
@dataclass(frozen=True)
class FedAdam(_FedOpt):
    """``strategy=fedadam``: Flower's FedAdam (server learning rate ``eta``, ``beta_1``, ``beta_2``, ``tau``)."""

    name: str = "fedadam"
    flower_class: ClassVar[str] = "FedAdam"


@schema("strategy", "fedyogi")
@dataclass(frozen=True)
class FedYogi(_FedOpt):
    """``strategy=fedyogi``: Flower's FedYogi (same options as fedadam)."""

    name: str = "fedyogi"
    flower_class: ClassVar[str] = "FedYogi"
    eta: float = 0.01
