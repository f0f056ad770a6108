"""What every federated strategy is: a client update and a server aggregation, as pure functions.

A strategy is a frozen dataclass (its options, ``@schema("strategy", name)``) with

- ``client_update(model, global_params, X, y, state, payload, opts)``: start from the global parameters,
  train locally, return the new parameters, what else is sent up (``extras``), the client's new persistent
  ``state`` and metrics;
- ``aggregate(global_params, results, server_state, num_clients)``: the new global parameters and the
  server's new state;
- ``init_server_state`` / ``payload``: server state (e.g. SCAFFOLD's control variate) and what of it goes
  down to the clients with the global model.

``fedgeo.fl.flower_strategy`` (server side) and ``fedgeo.fl.client_app`` carry these through Flower
messages; tests check them on tiny problems by hand, without Flower. Every strategy class names itself by
a class attribute, ``name = "fedprox"`` (its option's name).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from torch import nn

from fedgeo.fl.training import Arrays, LocalOpts, get_params, local_sgd, set_params, weighted_mean


@dataclass(frozen=True)
class ClientResult:
    """One client's reply: ``params`` after local training, ``num_examples``, and ``extras`` (arrays)."""

    params: Arrays
    num_examples: int
    extras: Arrays


@dataclass(frozen=True)
class FLStrategy:
    """Base of the ``strategy`` options.

    Attributes:
        name: the option's name, a class attribute of every strategy (``FedAvg.name == "fedavg"``); the
            config node carries it as ``strategy.name`` (``common.config.fixed_name``), which records and
            tables group by.
    """

    name: ClassVar[str] = ""

    def init_server_state(self, params: Arrays) -> Arrays:
        return {}

    def payload(self, server_state: Arrays) -> Arrays:
        """Arrays sent to every client besides the global parameters."""
        return {}

    def client_update(
        self,
        model: nn.Module,
        global_params: Arrays,
        X: np.ndarray,
        y: np.ndarray,
        state: Arrays,
        payload: Arrays,
        opts: LocalOpts,
    ) -> tuple[Arrays, Arrays, Arrays, dict[str, float]]:
        """Default (FedAvg): plain local SGD from the global parameters; no extras, no state."""
        set_params(model, global_params)
        metrics = local_sgd(model, X, y, opts)
        return get_params(model), {}, state, metrics

    def aggregate(
        self, global_params: Arrays, results: list[ClientResult], server_state: Arrays, num_clients: int
    ) -> tuple[Arrays, Arrays]:
        """Default (FedAvg): the average of the clients' parameters weighted by their example counts."""
        new = weighted_mean([r.params for r in results], [r.num_examples for r in results])
        return new, server_state
