"""``SuiteStrategy``: the Flower strategy that carries ours (``fedgeo.fl.strategy``) through a run.

Flower's ``FedAvg`` does the sampling, message building and round loop; its training aggregation is
replaced by our strategy's pure ``aggregate`` (over ``ClientResult``s), and the strategy's server state
(e.g. SCAFFOLD's control variate) rides down with the global model as the ``payload`` record. Each round's
bytes (down, up) are kept for the server's evaluation (``round_bytes``); failed replies and the round's
training facts (``train_stats``) land in the run's ``RunSink``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedgeo.fl.records import from_record, record_bytes, to_record
from fedgeo.fl.sink import RunSink
from fedgeo.fl.strategy.base import ClientResult, FLStrategy
from fedgeo.fl.training import Arrays


def content_bytes(content: RecordDict) -> int:
    """Payload bytes of a message's array records."""
    return sum(record_bytes(r) for r in content.values() if isinstance(r, ArrayRecord))


def train_stats(rnd: int, metrics: list[Any]) -> dict[str, float]:
    """One training round's facts from the replies' metrics: the global model's training loss before the
    round (``loss_start``, nats, mean over the participants' training rows), the mean loss during local
    training, and the fewest and most SGD steps a client took."""
    n = np.array([float(m["n_train"]) for m in metrics])
    steps = [int(m["local_steps"]) for m in metrics]
    return {
        "round": float(rnd),
        "loss_start": float(np.average([float(m["loss_start"]) for m in metrics], weights=n)),
        "train_loss": float(np.average([float(m["train_loss"]) for m in metrics], weights=n)),
        "local_steps_min": float(min(steps)),
        "local_steps_max": float(max(steps)),
    }


def client_results(replies: list[Message]) -> list[ClientResult]:
    """The good replies of a training round as our strategies' ``ClientResult``s."""
    return [
        ClientResult(
            from_record(r.content["arrays"]),
            int(r.content["metrics"]["num-examples"]),
            from_record(r.content["extras"]) if "extras" in r.content else {},
        )
        for r in replies
    ]


class SuiteStrategy(FedAvg):
    """Flower's ``FedAvg`` whose training aggregation is ``suite``'s.

    Args:
        suite: our strategy (its ``payload``, ``init_server_state`` and ``aggregate``).
        sink: the run's records (failed replies, training facts).
        num_clients: the federation's size (some aggregations scale by the sampled share).
        kwargs: ``FedAvg``'s options (``fraction_train``, ``min_train_nodes``, ...).
    """

    def __init__(self, suite: FLStrategy, sink: RunSink, num_clients: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.suite, self.sink, self.num_clients = suite, sink, num_clients
        self.server_state: Arrays | None = None
        self.global_arrays: Arrays | None = None
        self.round_bytes = [0.0, 0.0]  # bytes down, bytes up of the latest round

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Flower's training messages, each with the strategy's payload; the round's bytes down."""
        self.global_arrays = from_record(arrays)
        if self.server_state is None:
            self.server_state = self.suite.init_server_state(self.global_arrays)
        msgs = list(super().configure_train(server_round, arrays, config, grid))
        payload = self.suite.payload(self.server_state)
        for m in msgs:
            if payload:
                m.content["payload"] = to_record(payload)
        self.round_bytes = [float(sum(content_bytes(m.content) for m in msgs)), 0.0]
        return msgs

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The new global parameters by ``suite.aggregate`` over the good replies (``None`` without any)."""
        replies = list(replies)
        for r in replies:
            if r.has_error():
                self.sink.failures.append(
                    f"round {server_round}: node {r.metadata.src_node_id}: {r.error.reason}"
                )
        good = [r for r in replies if not r.has_error()]
        self.round_bytes[1] = float(sum(content_bytes(r.content) for r in good))
        if not good:
            return None, None
        new, self.server_state = self.suite.aggregate(
            self.global_arrays, client_results(good), self.server_state, self.num_clients
        )
        stats = train_stats(server_round, [r.content["metrics"] for r in good])
        self.sink.train.append(stats)
        return to_record(new), MetricRecord({"train_loss": stats["train_loss"]})
