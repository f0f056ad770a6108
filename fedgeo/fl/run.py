"""``mode=fl``: one federated training run on Flower, from the clients' raw sets to the run's metrics."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from common.errors import SuiteError
from common.experiment import RunOutput
from common.log import RunLogger, get_logger
from fedgeo.augment import Augmenter, ClientData
from fedgeo.classifier import TrainSettings
from fedgeo.data import EmbeddingDataset
from fedgeo.fl.accounting import COUNT_KEYS, totals
from fedgeo.fl.client_app import client_file, make_client_app, save_client
from fedgeo.fl.faults import check_clients
from fedgeo.fl.loop import CheckpointPlan
from fedgeo.fl.server_app import make_server_app
from fedgeo.fl.settings import FLSettings
from fedgeo.fl.setup import Setup
from fedgeo.fl.simulation import run_inprocess, run_ray
from fedgeo.fl.sink import RunSink
from fedgeo.fl.strategy.base import FLStrategy
from fedgeo.models import ClassifierModel

log = get_logger("fedgeo.fl")
SERIES = ("acc", "acc_domain_avg", "loss", "bytes_up", "bytes_down", "wall_s")


def summarize(sink: RunSink, domain_names: Sequence[str], fl: FLSettings) -> RunOutput:
    """The record's metrics (``acc_best``, ``acc_final``, ...) and per-round series from ``sink``."""
    if not sink.rounds:
        raise SuiteError(
            "federation: no round was evaluated (every client failed?): " + "; ".join(sink.failures[:3])
        )
    rounds = sink.rounds
    last = rounds[-1]
    keys = list(SERIES) + [f"acc_{d}" for d in domain_names if f"acc_{d}" in last]
    series = {k: [r[k] for r in rounds] for k in keys}
    series["round"] = [r["round"] for r in rounds]
    metrics = {
        "acc_final": last["acc"],
        "acc_best": max(r["acc"] for r in rounds),
        "acc_domain_avg_final": last["acc_domain_avg"],
        "acc_domain_avg_best": max(r["acc_domain_avg"] for r in rounds),
        "loss_final": last["loss"],
        "rounds": float(last["round"]),
        "bytes_up_total": float(sum(series["bytes_up"])),
        "bytes_down_total": float(sum(series["bytes_down"])),
        "train_wall_s": float(sum(series["wall_s"])),
        "round_wall_s_mean": float(np.mean(series["wall_s"])),
        "client_failures": float(len(sink.failures)),
        **{f"acc_{d}_final": last[f"acc_{d}"] for d in domain_names if f"acc_{d}" in last},
        **sink.exchange,
    }
    train = [c for c in sink.counts if c["phase"] == "train"]
    series |= {f"replies_{k}": [float(c[k]) for c in train] for k in COUNT_KEYS}
    series["replies_round"] = [float(c["round"]) for c in train]
    metrics |= totals(sink.counts) | {"resumed_round": float(sink.resumed_round)}
    train_metrics, train_series = training_summary(sink, fl.min_loss_drop)
    metrics |= train_metrics | {"lr": sink.exchange.get("lr_selected", fl.lr)}
    steps = {k: "round" for k in series} | {k: "train_round" for k in train_series}
    converged = {1.0: "true", 0.0: "false"}.get(train_metrics.get("converged", -1.0), "n/a")
    labels = {"status": "degraded" if metrics["rounds_degraded"] else "complete", "converged": converged}
    if sink.lr_search:
        labels["lr_search"] = json.dumps(sink.lr_search)
    if labels["status"] == "degraded":
        log.warning(
            f"federation: degraded run: {int(metrics['rounds_degraded'])} round(s) below fl.min_reply_fraction"
        )
    return RunOutput(metrics, series | train_series, steps, labels)


def training_summary(sink: RunSink, min_loss_drop: float) -> tuple[dict[str, float], dict[str, list[float]]]:
    """The training rounds' facts: SGD steps per client (fewest and most over all rounds), the global
    model's training loss before the first and the last round, its relative drop and ``converged``
    (``1.0`` when the drop is at least ``min_loss_drop``; with one round, the end point is the round's
    mean local loss); and the per-round series (``train_round``, ``train_loss_start``, ``local_steps_*``)."""
    tr = sink.train
    if not tr:
        return {}, {}
    first, last = tr[0]["loss_start"], (tr[-1]["loss_start"] if len(tr) > 1 else tr[0]["train_loss"])
    drop = 1.0 - last / first if first > 0 and np.isfinite(last) else float("-inf")
    metrics = {
        "local_steps_min": min(r["local_steps_min"] for r in tr),
        "local_steps_max": max(r["local_steps_max"] for r in tr),
        "train_loss_first": first,
        "train_loss_last": last,
        "loss_drop": drop,
        "converged": float(drop >= min_loss_drop),
    }
    names = {"round": "train_round", "loss_start": "train_loss_start",
             "local_steps_min": "local_steps_min", "local_steps_max": "local_steps_max"}  # fmt: skip
    return metrics, {out: [r[k] for r in tr] for k, out in names.items()}


def not_converged_message(metrics: dict[str, float], fl: FLSettings) -> str:
    """The console's warning for a run whose training loss barely moved (or rose)."""
    return (
        f"the global training loss fell too little ({metrics['train_loss_first']:.4f} -> "
        f"{metrics['train_loss_last']:.4f} nats, {100 * metrics['loss_drop']:.1f}% < fl.min_loss_drop="
        f"{100 * fl.min_loss_drop:g}%): the run is recorded "
        "converged=false; try a larger fl.lr, more rounds or a learning-rate search (fl.lr_candidates=[...])"
    )


def warn_if_not_converged(out: RunOutput, fl: FLSettings, logger: RunLogger) -> None:
    """A ``not_converged`` event and a console warning when the run is recorded ``converged=false``."""
    if out.labels.get("converged") == "false":
        logger.event("not_converged", loss_first=out.metrics["train_loss_first"],
                     loss_last=out.metrics["train_loss_last"])  # fmt: skip
        log.warning(not_converged_message(out.metrics, fl))


def raise_error(sink: RunSink) -> None:
    """Re-raise the error that stopped the server app (a ``SuiteError`` as it is, anything else wrapped)."""
    if sink.error is None:
        return
    if isinstance(sink.error, SuiteError):
        raise sink.error
    raise SuiteError(
        f"federation: the server app failed: {type(sink.error).__name__}: {sink.error}"
    ) from sink.error


def log_counts(logger: RunLogger) -> Callable[[dict], None]:
    """``sink.on_count``: every round's reply counts as a ``replies`` event in ``events.jsonl``."""
    return lambda row: logger.event("replies", **row)


def run_federated(
    raw: Sequence[ClientData],
    test: EmbeddingDataset,
    normalize: str,
    augment: Augmenter,
    model: ClassifierModel,
    strategy: FLStrategy,
    train: TrainSettings,
    fl: FLSettings,
    seed: int,
    logger: RunLogger,
    work_dir: Path,
    plan: CheckpointPlan | None = None,
) -> RunOutput:
    """Write every client's raw set to ``work_dir``, run the Flower apps on ``fl.backend``, summarise.
    With ``plan`` the server checkpoints every round and continues from ``plan.path`` when it exists."""
    check_clients(fl.fault_list, len(raw))
    logging.getLogger("flwr").setLevel(logging.WARNING)  # Flower's per-round INFO lines; ours are per round
    work_dir.mkdir(parents=True, exist_ok=True)
    for k, c in enumerate(raw):
        save_client(client_file(work_dir, k), c)
    setup = Setup(strategy, model, augment, train, fl, normalize, test.num_classes, test.num_domains,
                  test.dim, seed, str(work_dir))  # fmt: skip
    sink = RunSink(
        on_round=lambda rnd, ev: logger.log(
            {k: ev[k] for k in ("acc", "acc_domain_avg", "loss")}, rnd, "round"
        ),
        on_count=log_counts(logger),
    )
    done = threading.Event()
    server = make_server_app(
        setup,
        ClientData(test.features, test.labels, test.domains),
        test.domain_names,
        sink,
        done,
        len(raw),
        plan,
    )
    client = make_client_app(setup)
    t0 = time.perf_counter()
    limit = fl.timeout_s * (fl.rounds + 2)
    try:
        if fl.backend == "ray":
            run_ray(server, client, len(raw), fl.num_cpus, limit, done)
        else:
            run_inprocess(server, client, len(raw), limit, done)
    finally:
        for f in sink.failures:
            logger.event("client_failure", detail=f)
    raise_error(sink)
    out = summarize(sink, test.domain_names, fl)
    warn_if_not_converged(out, fl, logger)
    out.metrics |= {"fl_wall_s": time.perf_counter() - t0, "num_clients": float(len(raw)),
                    "multi_domain": float(bool(getattr(augment, "multi_domain", False)))}  # fmt: skip
    logger.event("fl", strategy=strategy.name, augment=augment.label, backend=fl.backend,
                 failures=len(sink.failures), status=out.labels["status"])  # fmt: skip
    return out
