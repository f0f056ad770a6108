"""The federation's ``ServerApp`` (Flower Message API): the server's rounds of a run.

``make_server_app`` runs, in order: the normaliser round (``query.norm``), the GGEUR round
(``query.ggeur``, only with ``augment=ggeur``), the preparation round (``query.prepare``: normaliser and
global shapes down, clients build their sets once), the learning-rate search (``query.lrsearch``, with
``fl.lr_candidates``), then ``fl.rounds`` training rounds (``fedgeo.fl.loop.run_rounds``: Flower's round
loop with reply accounting and checkpoints) of ``fedgeo.fl.flower_strategy.SuiteStrategy`` (Flower's
``FedAvg`` whose training aggregation is our strategy's pure ``aggregate``). After every round the global
model is scored on the test set (``evaluate_fn``); the round's bytes (up and down), wall time and reply
counts are recorded in ``RunSink`` (``fedgeo.fl.sink``). ``serve`` is the whole run on a grid; the
deployed app (``fedgeo.fl.app``) calls it with the settings of its ``run_config``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp

from common.errors import SuiteError
from common.log import get_logger
from fedgeo.augment import ClientData
from fedgeo.federation import TestSet, evaluate
from fedgeo.fl.accounting import count_replies
from fedgeo.fl.flower_strategy import SuiteStrategy, content_bytes
from fedgeo.fl.loop import CheckpointPlan, record_count, run_rounds
from fedgeo.fl.lr_search import pick_lr
from fedgeo.fl.records import from_record, to_record
from fedgeo.fl.setup import Setup
from fedgeo.fl.sink import RunSink
from fedgeo.fl.training import Arrays, get_params, set_params
from fedgeo.normalize import Normalizer, NormStats, fit_from_stats, merge_norm_stats

log = get_logger("fedgeo.fl")


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
    sink.exchange[f"bytes_down_{kind}"] = float(content_bytes(contents) * len(nodes))
    sink.exchange[f"bytes_up_{kind}"] = float(sum(content_bytes(r.content) for r in good))
    if not good:
        raise SuiteError(
            f"federation: no client answered the {kind} round within {timeout:g} s ({sink.failures[-1:]})"
        )
    return good


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
    model = setup.model.make(setup.dim, setup.num_classes, seed=setup.seed)
    lr = search_lr(grid, setup, get_params(model), sink) if setup.fl.lr_candidates else setup.fl.lr
    train_rounds(grid, setup, test, sink, model, lr, plan)


def search_lr(grid: Grid, setup: Setup, init: Arrays, sink: RunSink) -> float:
    """The learning rate chosen among ``fl.lr_candidates`` by the clients' held-out losses
    (``query.lrsearch``, ``fedgeo.fl.lr_search``); the choice and the mean losses land in ``sink``."""
    t0 = time.perf_counter()
    content = RecordDict({"arrays": to_record(init)})
    got = exchange(grid, "lrsearch", content, setup, sink)
    scores = [from_record(r.content["scores"]) for r in got]
    cands = setup.fl.lr_candidates
    lr, mean = pick_lr(np.stack([s["losses"] for s in scores]), np.array([s["n"][0] for s in scores]), cands)
    sink.exchange |= {"lr_selected": lr, "lr_search_s": time.perf_counter() - t0}
    sink.lr_search = {f"{c:g}": float(m) for c, m in zip(cands, mean, strict=True)}
    log.info("learning rate %g chosen on the clients' held-out training rows (mean loss per lr: %s)", lr,
             ", ".join(f"{c:g}: {m:.4f}" for c, m in zip(cands, mean, strict=True)))  # fmt: skip
    return lr


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
        sink.exchange |= {
            f"ggeur_{k}": float(info.get(k, 0))
            for k in ("clipped", "withheld_classes", "withheld_prototypes")
        }
    got = exchange(grid, "prepare", RecordDict({"norm": norm_rec, "reply": to_record(reply)}), setup, sink)
    sink.exchange["n_train_mean"] = float(np.mean([r.content["metrics"]["n_train"] for r in got]))
    sink.exchange["prepare_s"] = time.perf_counter() - t0
    return norm


def train_rounds(grid: Grid, setup: Setup, test: TestSet, sink: RunSink, model: Any, lr: float,
                 plan: CheckpointPlan | None) -> None:  # fmt: skip
    """``fl.rounds`` training rounds (``run_rounds``) of ``model`` (its parameters the initial global ones),
    clients training at learning rate ``lr``; the global model scored on ``test``."""
    fl = setup.fl
    nodes = list(grid.get_node_ids())
    kwargs: dict[str, Any] = {"fraction_train": fl.fraction, "fraction_evaluate": 0.0,
                              "min_train_nodes": fl.min_clients, "min_available_nodes": len(nodes)}  # fmt: skip
    flwr_log = logging.getLogger("flwr")
    level = flwr_log.level
    flwr_log.setLevel(logging.ERROR)  # Flower warns that fraction_evaluate=0: the server evaluates instead
    try:
        strat = SuiteStrategy(setup.strategy, sink, len(nodes), **kwargs)
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
        if sink.on_round:
            sink.on_round(rnd, ev)
        return MetricRecord({k: float(v) for k, v in ev.items()})

    initial = to_record(get_params(model))
    run_rounds(grid, strat, initial, fl, evaluate_fn, sink, plan, {"lr": float(lr)})
