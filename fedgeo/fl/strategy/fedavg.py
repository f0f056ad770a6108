"""FedAvg (McMahan et al., 2017): local SGD from the global model, example-weighted parameter average."""

from __future__ import annotations

from dataclasses import dataclass

from common.config import schema
from fedgeo.fl.strategy.base import FLStrategy


@schema("strategy", "fedavg")
@dataclass(frozen=True)
class FedAvg(FLStrategy):
    """``strategy=fedavg``: the base class's client update and aggregation, no options."""

    name = "fedavg"
