"""The federation's ``ServerApp`` (Flower Message API) and the Flower strategy that carries ours.

``make_server_app`` runs, in order: the normaliser round (``query.norm``), the GGEUR round
(``query.ggeur``, only with ``augment=ggeur``), the preparation round (``query.prepare``: normaliser and
global shapes down, clients build their sets once), then ``fl.rounds`` training rounds
(``fedgeo.fl.loop.run_rounds``: Flower's round loop with reply accounting and checkpoints) of Flower's
``FedAvg`` strategy whose training aggregation is our strategy's pure ``aggregate``. After every round the
global model is scored on the test set (``evaluate_fn``); the round's bytes (up and down), wall time and
reply counts are recorded in ``RunSink``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp import strategy as flwr_strategy

from common.errors import SuiteError
from common.log import get_logger
from fedgeo.augment import ClientData
from fedgeo.federation import TestSet, evaluate
from fedgeo.fl.accounting import count_replies
from fedgeo.fl.client_app import Setup
from fedgeo.fl.loop import CheckpointPlan, record_count, run_rounds
from fedgeo.fl.records import from_record, record_bytes, to_record
from fedgeo.fl.strategy.base import ClientResult
from fedgeo.fl.training import Arrays, set_params
from fedgeo.normalize import Normalizer, NormStats, fit_from_stats, merge_norm_stats

log = get_logger("fedgeo.fl")


@dataclass
class RunSink:
    """What the server app reports back to the runner (it runs in the runner's process)."""

    rounds: list[dict[str, float]] = field(default_factory=list)
    exchange: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    counts: list[dict[str, Any]] = field(default_factory=list)  # fedgeo.fl.accounting rows, every round
    final_params: Arrays | None = None
    on_round: Any = None  # callable(round, metrics) for live logging
    on_count: Any = None  # callable(count row) for live logging
    error: BaseException | None = None  # why the server app stopped early (re-raised by the runner)
    resumed_round: int = 0  # the checkpoint's round a resumed run started after (0 = from scratch)

    def progress(self) -> dict[str, Any]:
        """What a checkpoint keeps of the run's records (the training rounds' part)."""
        return {"rounds": self.rounds, "failures": [f for f in self.failures if f.startswith("round ")],
                "counts": [c for c in self.counts if c["phase"] == "train"]}  # fmt: skip

    def restore(self, progress: dict[str, Any]) -> None:
        """Continue from a checkpoint's ``progress`` (this run's preparation records kept)."""
        self.rounds = list(progress["rounds"])
        self.failures = [f for f in self.failures if not f.startswith("round ")] + progress["failures"]
        self.counts = [c for c in self.counts if c["phase"] != "train"] + progress["counts"]


def _content_bytes(content: RecordDict) -> int:
    return sum(record_bytes(r) for r in content.values() if isinstance(r, ArrayRecord))


def exchange(grid: Grid, kind: str, contents: RecordDict, setup: Setup, sink: RunSink) -> list[Message]:
    """Send ``query.<kind>`` with ``contents`` to every node; the valid replies (failures reported, replies
    counted as a round 0 of phase ``kind``)."""
    nodes, timeout = list(grid.get_node_ids()), setup.fl.timeout_s
    msgs = [Message(contents, dst_node_id=n, message_type=f"query.{kind}") for n in nodes]
    replies = list(grid.send_and_receive(msgs, timeout=timeout))
    record_count(sink, count_replies(kind, 0, msgs, replies), setup.fl, 0)
    good = [r for r in replies if not r.has_error()]
    for r in replies:
        if r.has_error():
            sink.failures.append(f"{kind}: node {r.metadata.src_node_id}: {r.error.reason}")
    sink.exchange[f"bytes_down_{kind}"] = float(_content_bytes(contents) * len(nodes))
    sink.exchange[f"bytes_up_{kind}"] = float(sum(_content_bytes(r.content) for r in good))
    if not good:
        raise SuiteError(
            f"federation: no client answered the {kind} round within {timeout:g} s ({sink.failures[-1:]})"
        )
    return good


def _suite_strategy(base: type, spec, sink: RunSink, num_clients: int, kwargs: dict[str, Any]):
    """A Flower strategy class derived from ``base`` whose training aggregation is ``spec``'s."""

    class SuiteStrategy(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__(**kwargs)
            self.server_state: Arrays | None = None
            self.global_arrays: Arrays | None = None
            self.round_bytes = [0.0, 0.0]

        def configure_train(
            self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
        ) -> Iterable[Message]:
            self.global_arrays = from_record(arrays)
            if self.server_state is None:
                self.server_state = spec.init_server_state(self.global_arrays)
            msgs = list(super().configure_train(server_round, arrays, config, grid))
            payload = spec.payload(self.server_state)
            for m in msgs:
                if payload:
                    m.content["payload"] = to_record(payload)
            self.round_bytes = [float(sum(_content_bytes(m.content) for m in msgs)), 0.0]
            return msgs

        def aggregate_train(self, server_round: int, replies: Iterable[Message]):
            replies = list(replies)
            for r in replies:
                if r.has_error():
                    sink.failures.append(
                        f"round {server_round}: node {r.metadata.src_node_id}: {r.error.reason}"
                    )
            good = [r for r in replies if not r.has_error()]
            self.round_bytes[1] = float(sum(_content_bytes(r.content) for r in good))
            if not good:
                return None, None
            results = [
                ClientResult(
                    from_record(r.content["arrays"]),
                    int(r.content["metrics"]["num-examples"]),
                    from_record(r.content["extras"]) if "extras" in r.content else {},
                )
                for r in good
            ]
            new, self.server_state = spec.aggregate(
                self.global_arrays, results, self.server_state, num_clients
            )
            loss = float(np.average([r.content["metrics"]["train_loss"] for r in good],
                                    weights=[x.num_examples for x in results]))  # fmt: skip
            return to_record(new), MetricRecord({"train_loss": loss})

    return SuiteStrategy()


def make_server_app(
    setup: Setup,
    test_raw: ClientData,
    domain_names: tuple[str, ...],
    sink: RunSink,
    done: threading.Event | None = None,
    num_nodes: int | None = None,
    plan: CheckpointPlan | None = None,
) -> ServerApp:
    """The ``ServerApp`` of a run; ``test_raw`` is the global test set before normalisation. With
    ``num_nodes`` it first waits until that many nodes are connected (Ray and deployment register them
    after the server starts). An error stops it and lands in ``sink.error``; ``done`` is set at the end
    either way (the runner's watchdog waits for it)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            if num_nodes:
                wait_for_nodes(grid, num_nodes, setup.fl.timeout_s)
            serve(grid, setup, test_raw, domain_names, sink, plan)
        except BaseException as exc:  # noqa: BLE001 - handed to the runner, which re-raises it
            sink.error = exc
        finally:
            if done is not None:
                done.set()

    return app


def wait_for_nodes(grid: Grid, n: int, timeout_s: float) -> None:
    """Block until ``n`` nodes are connected; ``SuiteError`` after ``timeout_s`` seconds."""
    t0 = time.monotonic()
    while len(list(grid.get_node_ids())) < n:
        if time.monotonic() - t0 > timeout_s:
            raise SuiteError(f"federation: only {len(list(grid.get_node_ids()))} of {n} nodes connected")
        time.sleep(0.2)


def serve(grid: Grid, setup: Setup, test_raw: ClientData, domain_names: tuple[str, ...], sink: RunSink,
          plan: CheckpointPlan | None = None) -> None:  # fmt: skip
    """The server's whole run on ``grid``: normaliser, GGEUR and preparation rounds, then ``fl.rounds``
    training rounds (from ``plan``'s checkpoint, when it holds one); every evaluated round lands in
    ``sink``."""
    norm = prepare_clients(grid, setup, sink)
    test = TestSet(norm(test_raw.features), test_raw.labels, test_raw.domains, domain_names)
    train_rounds(grid, setup, test, sink, plan)


def prepare_clients(grid: Grid, setup: Setup, sink: RunSink) -> Normalizer:
    """The rounds before training: normaliser statistics (``query.norm``), GGEUR (``query.ggeur``, with
    ``augment=ggeur``), preparation (``query.prepare``); returns the fitted normaliser."""
    t0 = time.perf_counter()
    norm = Normalizer(setup.normalize)
    if setup.normalize not in ("none", "l2"):  # row-wise kinds need no statistics
        got = exchange(grid, "norm", RecordDict({"config": ConfigRecord({})}), setup, sink)
        stats = [from_record(r.content["stats"]) for r in got]
        merged = merge_norm_stats([NormStats(int(s["count"][0]), s["mean"], s["m2"]) for s in stats])
        norm = fit_from_stats(setup.normalize, merged)
    norm_rec = to_record({} if norm.mean is None else {"mean": norm.mean, "scale": norm.scale})
    reply: Arrays = {}
    if setup.augment.enabled:
        got = exchange(grid, "ggeur", RecordDict({"norm": norm_rec}), setup, sink)
        reply, info = setup.augment.server_reply([from_record(r.content["upload"]) for r in got])
        sink.exchange["ggeur_clipped"] = float(info.get("clipped", 0))
    got = exchange(grid, "prepare", RecordDict({"norm": norm_rec, "reply": to_record(reply)}), setup, sink)
    sink.exchange["n_train_mean"] = float(np.mean([r.content["metrics"]["n_train"] for r in got]))
    sink.exchange["prepare_s"] = time.perf_counter() - t0
    return norm


def train_rounds(grid: Grid, setup: Setup, test: TestSet, sink: RunSink, plan: CheckpointPlan | None) -> None:
    """``fl.rounds`` training rounds (``run_rounds``); the global model scored on ``test``."""
    fl = setup.fl
    nodes = list(grid.get_node_ids())
    model = setup.model.make(setup.dim, setup.num_classes, seed=setup.seed)
    base = flwr_strategy.FedAvg  # its sampling and round loop; the aggregation is the suite strategy's
    kwargs: dict[str, Any] = {"fraction_train": fl.fraction, "fraction_evaluate": 0.0,
                              "min_train_nodes": fl.min_clients, "min_available_nodes": len(nodes)}  # fmt: skip
    flwr_log = logging.getLogger("flwr")
    level = flwr_log.level
    flwr_log.setLevel(logging.ERROR)  # Flower warns that fraction_evaluate=0: the server evaluates instead
    try:
        strat = _suite_strategy(base, setup.strategy, sink, len(nodes), kwargs)
    finally:
        flwr_log.setLevel(level)
    clock = [time.perf_counter()]

    def evaluate_fn(rnd: int, arrays: ArrayRecord) -> MetricRecord | None:
        if rnd == 0:
            clock[0] = time.perf_counter()
            return None
        if rnd % fl.eval_every and rnd != fl.rounds:
            return None
        params = from_record(arrays)
        ev = evaluate(set_params(model, params), test)
        ev |= {"bytes_down": strat.round_bytes[0], "bytes_up": strat.round_bytes[1],
               "wall_s": time.perf_counter() - clock[0]}  # fmt: skip
        clock[0] = time.perf_counter()
        sink.rounds.append({"round": float(rnd), **ev})
        sink.final_params = params
        if sink.on_round:
            sink.on_round(rnd, ev)
        return MetricRecord({k: float(v) for k, v in ev.items()})

    initial = to_record({k: v.detach().numpy().copy() for k, v in model.state_dict().items()})
    run_rounds(grid, strat, initial, fl, evaluate_fn, sink, plan)
