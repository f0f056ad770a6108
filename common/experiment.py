"""Run one experiment: seed, resume check, logging sinks, timing, and the atomic run record.

This is the contract between the runners and the algorithms: a runner hands a plain, resolved config and a
``body(ctx) -> RunOutput``; ``run_experiment`` does the rest. Nothing here knows about Hydra.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import ConfigError
from common.log import RunLogger, announce, get_logger, make_run_logger
from common.records import RunRecord, config_hash, find_complete_record, git_sha, write_record
from common.seeding import seed_everything


@dataclass
class RunOutput:
    """What an experiment body returns.

    ``metrics``: flat name -> number. ``series``: name -> list of numbers (per round, per layer, ...),
    ``series_step``: name -> the step's name (``round``, ``layer``) for each series. ``labels``: name -> text,
    facts about the run that are not numbers (a solver's ``status``: ``optimal``, ``time_limit``, ...).
    """

    metrics: dict[str, float]
    series: dict[str, list[float]] = field(default_factory=dict)
    series_step: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class RunContext:
    """What an experiment body gets: its folder, plain config, seed, a seeded generator and the loggers."""

    run_dir: Path
    config: dict[str, Any]
    seed: int
    rng: np.random.Generator
    logger: RunLogger
    artifacts: list[str] = field(default_factory=list)

    @property
    def log(self):  # noqa: ANN201 - a logging.Logger
        return get_logger("run")

    def artifact(self, name: str) -> Path:
        """A path for a file in the run folder; it is listed in the record's ``artifacts``."""
        if name not in self.artifacts:
            self.artifacts.append(name)
        path = self.run_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path


def run_experiment(
    config: Mapping[str, Any],
    suite: str,
    body: Callable[[RunContext], RunOutput],
    run_dir: str | os.PathLike[str],
    resume: bool = False,
    resume_roots: Sequence[str | os.PathLike[str]] = (),
    group: str | None = None,
    name: str | None = None,
) -> RunRecord:
    """Run ``body`` once under ``config`` and write ``run_dir/result.json``.

    Args:
        config: the resolved config (plain dict); must hold an integer ``seed``. ``logger`` selects sinks.
        suite: ``moe``, ``serve`` or ``fed``.
        body: the experiment; gets a ``RunContext``, returns a ``RunOutput``.
        run_dir: this run's folder (created).
        resume: if true, look for a complete record with the same config hash under ``resume_roots``;
            when one exists, copy it into ``run_dir`` (marked ``resumed_from``) and skip the work.
        group, name: wandb grouping (the sweep) and run name.

    Returns:
        The record written (or copied).
    """
    cfg = dict(config)
    seed = cfg.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError("seed", f"expected a non-negative integer, got {seed!r}")
    out_dir = Path(run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    chash = config_hash(cfg)
    if resume:
        done = resume_from(resume_roots, chash, out_dir)
        if done is not None:
            return done
    run_logger = make_run_logger(cfg.get("logger"), out_dir, cfg, default_group=group, default_name=name)
    run_logger.capture_logs()
    try:
        record = _execute(cfg, suite, body, out_dir, run_logger, chash)
    except KeyboardInterrupt:
        run_logger.finish("interrupted")
        raise
    except BaseException:
        run_logger.finish("failed")
        raise
    run_logger.finish("complete")
    get_logger("run").info(f"run record: {out_dir / 'result.json'}")
    return record


def resume_from(roots: Sequence[str | os.PathLike[str]], chash: str, out_dir: Path) -> RunRecord | None:
    """The complete record of config ``chash`` under ``roots``, copied into ``out_dir`` (unless it is
    already there) and marked ``resumed_from``; ``None`` when there is none."""
    found = find_complete_record(roots, chash)
    if found is None:
        return None
    path, rec = found
    if path.resolve() != (out_dir / "result.json").resolve():
        rec = replace(rec, resumed_from=str(path))
        write_record(out_dir, rec)
    announce(f"skipped: a complete record of this config ({chash}) is in {path.parent}")
    return rec


def _execute(
    cfg: dict[str, Any],
    suite: str,
    body: Callable[[RunContext], RunOutput],
    out_dir: Path,
    run_logger: RunLogger,
    chash: str,
) -> RunRecord:
    """Seed, run ``body``, write the record atomically; returns it."""
    started = datetime.now(UTC).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    rng = seed_everything(cfg["seed"])
    ctx = RunContext(run_dir=out_dir, config=cfg, seed=cfg["seed"], rng=rng, logger=run_logger)
    run_logger.event("start", suite=suite, config_hash=chash, run_dir=str(out_dir))
    output = body(ctx)
    record = RunRecord(
        suite=suite,
        config=cfg,
        metrics=dict(output.metrics),
        series={k: list(map(float, v)) for k, v in output.series.items()},
        series_step=dict(output.series_step),
        labels={k: str(v) for k, v in output.labels.items()},
        seed=cfg["seed"],
        started=started,
        duration_s=round(time.perf_counter() - t0, 6),
        git_sha=git_sha(),
        config_hash=chash,
        artifacts=list(ctx.artifacts),
    )
    run_logger.summary(record.metrics)
    write_record(out_dir, record)
    return record
