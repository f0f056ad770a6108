"""The training rounds of a run: Flower's round loop with reply accounting and per-round checkpoints.

``run_rounds`` does what ``flwr.serverapp.strategy.Strategy.start`` does for training (configure, send
and receive with the reply timeout, aggregate, evaluate on the server), and besides: it samples from the
federation as it was at the start (a node that died is still expected, so its missing reply counts),
counts every round's replies (``fedgeo.fl.accounting``), and writes a checkpoint after every round
(``fedgeo.fl.checkpoint``), from which it continues when the run's folder holds one of the same key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid

from common.log import get_logger
from fedgeo.fl.accounting import RoundCount, count_replies, degraded_error, is_degraded
from fedgeo.fl.checkpoint import load_checkpoint, read_meta, restore_rng, save_checkpoint
from fedgeo.fl.records import from_record, to_record
from fedgeo.fl.settings import FLSettings

log = get_logger("fedgeo.fl")


@dataclass(frozen=True)
class CheckpointPlan:
    """Where the server keeps its checkpoint (``path``, a ``checkpoint.npz``) and the run's ``key``."""

    path: str
    key: str


class FixedNodes:
    """The node ids of the federation at the start, for the strategy's sampling (a ``Grid`` stand-in)."""

    def __init__(self, nodes: Iterable[int]) -> None:
        self.nodes = list(nodes)

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)


def record_count(sink: Any, count: RoundCount, fl: FLSettings, last_complete: int) -> None:
    """Add ``count`` to ``sink.counts`` (and ``sink.on_count``); a round below ``fl.min_reply_fraction``
    is marked degraded, and raises ``DegradedRun`` under ``fl.on_degraded=fail``."""
    degraded = is_degraded(count, fl.min_reply_fraction)
    row = count.as_dict() | {"degraded": degraded}
    sink.counts.append(row)
    if sink.on_count:
        sink.on_count(row)
    if degraded:
        log.warning(f"federation: {count.text()}, below fl.min_reply_fraction={fl.min_reply_fraction:g}")
        if fl.on_degraded == "fail":
            raise degraded_error(count, fl.min_reply_fraction, last_complete)


def _resume(
    plan: CheckpointPlan | None, strat: Any, sink: Any, initial: ArrayRecord
) -> tuple[ArrayRecord, int]:
    """The model and round to start from: the checkpoint's (state, records and RNGs restored) or round 0."""
    path = Path(plan.path) if plan else None
    if path is None or not path.is_file() or (read_meta(path) or {}).get("key") != plan.key:
        return initial, 0
    ck = load_checkpoint(path)
    strat.server_state = ck.server_state
    sink.restore(ck.progress)
    sink.resumed_round = ck.round
    restore_rng(ck)
    log.info(f"federation: resumed from the checkpoint of round {ck.round} ({path})")
    return to_record(ck.global_params), ck.round


def run_rounds(
    grid: Grid,
    strat: Any,
    initial: ArrayRecord,
    fl: FLSettings,
    evaluate_fn: Callable[[int, ArrayRecord], Any],
    sink: Any,
    plan: CheckpointPlan | None,
    config: dict[str, Any] | None = None,
) -> None:
    """Training rounds ``1..fl.rounds`` (after the checkpoint's, when resuming) of ``strat`` on ``grid``;
    ``config`` goes to every client with the round's number (e.g. the searched ``lr``)."""
    nodes = FixedNodes(grid.get_node_ids())
    arrays, start = _resume(plan, strat, sink, initial)
    evaluate_fn(0, arrays)  # starts the round clock
    for rnd in range(start + 1, fl.rounds + 1):
        msgs = list(strat.configure_train(rnd, arrays, ConfigRecord(dict(config or {})), nodes))
        replies = list(grid.send_and_receive(msgs, timeout=fl.timeout_s))
        record_count(sink, count_replies("train", rnd, msgs, replies), fl, rnd - 1)
        agg, _ = strat.aggregate_train(rnd, replies)
        if agg is not None:
            arrays = agg
        evaluate_fn(rnd, arrays)
        if plan is not None:
            save_checkpoint(
                Path(plan.path), rnd, plan.key, from_record(arrays), strat.server_state, sink.progress()
            )
