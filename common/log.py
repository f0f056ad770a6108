"""The one logging entry point of the suite.

``get_logger`` gives the console logger (rich, on stderr). ``RunLogger`` fans metrics and events out to the
sinks of one run: the console, a JSONL event log in the run folder, and optionally wandb (offline by
default, never needing a login). ``make_run_logger`` builds it from the ``logger`` config group.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from common.config import build, rekey, schema
from common.errors import ConfigError

_ROOT = "suite"
_CONSOLE = "suite-console"
_ECHO = "echo"  # the logger of ConsoleSink: metrics and events the JSONL sink records itself
LOGGER_KINDS = ("none", "wandb_offline", "wandb")


def get_logger(name: str | None = None) -> logging.Logger:
    """A child of the ``suite`` logger; the first call installs the rich console handler.

    The console shows ``SUITE_LOG_LEVEL`` and above (default ``INFO``; the runners lower it to ``WARNING``
    unless ``-v`` or ``log.level`` asks for more, see ``set_console_level``). The logger itself passes INFO
    on, so that a run's ``events.jsonl`` keeps the details the console does not show.
    """
    root = logging.getLogger(_ROOT)
    if not getattr(root, "_suite_configured", False):
        try:
            from rich.console import Console
            from rich.logging import RichHandler

            handler: logging.Handler = RichHandler(
                console=Console(stderr=True, width=None if sys.stderr.isatty() else 160),
                show_path=False,
                rich_tracebacks=False,
                markup=False,
            )
            handler.setFormatter(logging.Formatter("%(message)s", datefmt="[%X]"))
        except ImportError:  # pragma: no cover - rich is a dependency
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        handler.set_name(_CONSOLE)
        root.addHandler(handler)
        root.propagate = False
        root._suite_configured = True  # type: ignore[attr-defined]
        set_console_level(os.environ.get("SUITE_LOG_LEVEL", "INFO"))
    return root if not name else root.getChild(name)


def set_console_level(level: str) -> None:
    """Show ``level`` and above on the console (``debug``, ``info``, ``warning``, ``error``)."""
    root = logging.getLogger(_ROOT)
    value = logging.getLevelName(level.upper())
    if not isinstance(value, int):
        raise ConfigError("log.level", f"expected one of debug, info, warning, error, got {level!r}")
    for handler in root.handlers:
        if handler.get_name() == _CONSOLE:
            handler.setLevel(value)
    root.setLevel(min(value, logging.INFO))


def announce(text: str) -> None:
    """A line the user always sees, whatever the console level: one per job, resume notices."""
    print(text, file=sys.stderr, flush=True)


class JsonlLogHandler(logging.Handler):
    """Copies the suite's log records of one run into its ``events.jsonl`` (``kind: log``)."""

    def __init__(self, sink: JsonlSink) -> None:
        super().__init__(logging.DEBUG)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == f"{_ROOT}.{_ECHO}":  # the console's echo of what the sinks already hold
            return
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not break the run
            message = str(record.msg)
        self.sink.event("log", {"level": record.levelname.lower(), "logger": record.name, "message": message})


class Sink(Protocol):
    """What a run logger writes to."""

    def log(self, metrics: Mapping[str, float], step: int | None, step_name: str) -> None: ...

    def summary(self, metrics: Mapping[str, float]) -> None: ...

    def event(self, kind: str, data: Mapping[str, Any]) -> None: ...

    def finish(self, status: str) -> None: ...


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


class ConsoleSink:
    """Per-step lines and the final summary on the console logger."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or get_logger(_ECHO)

    def log(self, metrics: Mapping[str, float], step: int | None, step_name: str) -> None:
        head = f"{step_name} {step}: " if step is not None else ""
        self.logger.info(head + "  ".join(f"{k}={_fmt(v)}" for k, v in metrics.items()))

    def summary(self, metrics: Mapping[str, float]) -> None:
        self.logger.info("summary: " + "  ".join(f"{k}={_fmt(v)}" for k, v in metrics.items()))

    def event(self, kind: str, data: Mapping[str, Any]) -> None:
        self.logger.info(f"{kind}: " + "  ".join(f"{k}={_fmt(v)}" for k, v in data.items()))

    def finish(self, status: str) -> None:
        pass


class JsonlSink:
    """Appends one JSON object per line to ``events.jsonl`` in the run folder (flushed on every line)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = self.path.open("a", encoding="utf-8")

    def _write(self, obj: dict[str, Any]) -> None:
        obj = {"t": round(time.time(), 3), **obj}
        self._fh.write(json.dumps(obj, default=_jsonable, allow_nan=False) + "\n")
        self._fh.flush()

    def log(self, metrics: Mapping[str, float], step: int | None, step_name: str) -> None:
        self._write({"kind": "metrics", "step_name": step_name, "step": step, "metrics": _clean(metrics)})

    def summary(self, metrics: Mapping[str, float]) -> None:
        self._write({"kind": "summary", "metrics": _clean(metrics)})

    def event(self, kind: str, data: Mapping[str, Any]) -> None:
        self._write({"kind": kind, **_clean(data)})

    def finish(self, status: str) -> None:
        if not self._fh.closed:
            self._write({"kind": "finish", "status": status})
            self._fh.close()


class WandbSink:
    """Weights & Biases, ``offline`` (default: files under the run folder, no network, no login) or ``online``.

    Logs the resolved config, groups the runs of a sweep (``group``), declares a step metric per series
    (``round``, ``layer``, ...) and finishes the run so that the next multirun job starts a fresh one.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        config: Mapping[str, Any],
        project: str,
        mode: str = "offline",
        group: str | None = None,
        name: str | None = None,
        tags: Sequence[str] = (),
        entity: str | None = None,
    ) -> None:
        import wandb

        self._wandb = wandb
        self._defined: set[str] = set()
        os.environ.setdefault("WANDB_SILENT", "true")
        if mode == "offline":
            os.environ["WANDB_MODE"] = "offline"
        self.run = wandb.init(
            project=project,
            entity=entity,
            mode=mode,
            dir=str(run_dir),
            config=dict(config),
            group=group,
            name=name,
            tags=list(tags),
            reinit="finish_previous",
            settings=wandb.Settings(console="off", x_disable_stats=True, save_code=False),
        )

    def log(self, metrics: Mapping[str, float], step: int | None, step_name: str) -> None:
        data = dict(_clean(metrics))
        if step is not None:
            if step_name not in self._defined:
                self._wandb.define_metric(step_name)
                for key in data:
                    self._wandb.define_metric(key, step_metric=step_name)
                self._defined.add(step_name)
            data[step_name] = step
        self.run.log(data)

    def summary(self, metrics: Mapping[str, float]) -> None:
        for k, v in _clean(metrics).items():
            self.run.summary[k] = v

    def event(self, kind: str, data: Mapping[str, Any]) -> None:
        pass

    def finish(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == "complete" else 1)


class RunLogger:
    """Fans one run's metrics and events out to its sinks. Use as a context manager or call ``finish``."""

    def __init__(self, sinks: Sequence[Sink]) -> None:
        self.sinks = list(sinks)
        self._finished = False

    def log(self, metrics: Mapping[str, float], step: int | None = None, step_name: str = "step") -> None:
        """Log metrics of one step (a round, a layer); ``step_name`` names the x-axis."""
        for s in self.sinks:
            s.log(metrics, step, step_name)

    def summary(self, metrics: Mapping[str, float]) -> None:
        for s in self.sinks:
            s.summary(metrics)

    def event(self, kind: str, **data: Any) -> None:
        for s in self.sinks:
            s.event(kind, data)

    def capture_logs(self) -> None:
        """From now until ``finish``, copy the suite's log records into this run's JSONL sinks."""
        self._handlers = [JsonlLogHandler(s) for s in self.sinks if isinstance(s, JsonlSink)]
        for h in self._handlers:
            get_logger().addHandler(h)

    def finish(self, status: str = "complete") -> None:
        if self._finished:
            return
        self._finished = True
        for h in getattr(self, "_handlers", []):
            get_logger().removeHandler(h)
        for s in self.sinks:
            s.finish(status)

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.finish("complete" if exc_type is None else "failed")


@schema("logger", "run_logger")
@dataclass(frozen=True)
class LoggerSpec:
    """Which sinks a run logs to (the ``logger`` config group; every option uses this one schema).

    Attributes:
        kind: ``none`` (console + JSONL), ``wandb_offline`` (adds wandb, files only, no login) or ``wandb``
            (online: needs a login and a network).
        project, entity, group, name, tags: wandb's; ``group`` defaults to the sweep folder's name and
            ``name`` to the job's overrides.
    """

    kind: str = "none"
    project: str = "moe-fedgeo-bench"
    entity: str | None = None
    group: str | None = None
    name: str | None = None
    tags: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.kind not in LOGGER_KINDS:
            raise ConfigError("kind", f"expected one of {list(LOGGER_KINDS)}, got {self.kind!r}")


def logger_spec(logger_cfg: Mapping[str, Any] | LoggerSpec | None) -> LoggerSpec:
    """The ``logger`` node as a ``LoggerSpec`` (built by instantiate when it has a ``_target_``)."""
    if isinstance(logger_cfg, LoggerSpec):
        return logger_cfg
    cfg = dict(logger_cfg or {})
    if "_target_" in cfg:
        return build(cfg, "logger")
    try:
        return LoggerSpec(**cfg)
    except TypeError as exc:
        raise ConfigError("logger", f"unknown option: {exc}") from None
    except ConfigError as exc:
        raise rekey(exc, "logger") from None


def make_run_logger(
    logger_cfg: Mapping[str, Any] | LoggerSpec | None,
    run_dir: str | os.PathLike[str],
    config: Mapping[str, Any],
    default_group: str | None = None,
    default_name: str | None = None,
    console: bool = True,
) -> RunLogger:
    """Build the sinks of one run from the ``logger`` config group (see ``LoggerSpec``).

    The JSONL log is always written to ``run_dir/events.jsonl``.
    """
    spec = logger_spec(logger_cfg)
    sinks: list[Sink] = []
    if console:
        sinks.append(ConsoleSink())
    sinks.append(JsonlSink(Path(run_dir) / "events.jsonl"))
    if spec.kind != "none":
        sinks.append(
            WandbSink(
                run_dir,
                config,
                project=spec.project,
                mode="offline" if spec.kind == "wandb_offline" else "online",
                group=spec.group or default_group,
                name=spec.name or default_name,
                tags=spec.tags,
                entity=spec.entity,
            )
        )
    return RunLogger(sinks)


def _jsonable(obj: Any) -> Any:
    try:
        return float(obj)
    except (TypeError, ValueError):
        return str(obj)


def _clean(d: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, float) and not math.isfinite(v):
            out[k] = None
        else:
            out[k] = v
    return out
