"""The run record: one ``result.json`` per run, self-describing, written atomically.

Schema (``SCHEMA``)::

    {
      "schema": "suite.run/1",
      "suite": "moe" | "serve" | "fed",
      "status": "complete",
      "config": {...resolved config...},
      "config_hash": "sha256 hex, 16 chars",
      "metrics": {"name": number | null, ...},   # flat; null = undefined (0/0) or non-finite
      "series": {"name": [number, ...], ...},    # optional per-round / per-layer lists
      "series_step": {"name": "round" | "layer" | ...},
      "labels": {"name": "text", ...},           # facts that are not numbers, e.g. a solver's "status"
      "seed": int,
      "git_sha": "hex" | null,
      "started": "ISO-8601 UTC",
      "duration_s": float,
      "artifacts": ["relative/path", ...],
      "resumed_from": "path of the record this one was copied from by resume=true" | null
    }
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common.atomic import TMP_PREFIX, atomic_write_json
from common.errors import RecordError

SCHEMA = "suite.run/1"
RECORD_NAME = "result.json"
SUITES = ("moe", "serve", "fed")
# Keys that do not change what a run computes, so they do not enter the config hash.
NON_SEMANTIC_KEYS = frozenset(
    {"hydra", "logger", "log", "resume", "resume_dir", "paths", "progress", "sweep_name"}
)


@dataclass
class RunRecord:
    """In-memory form of ``result.json``; see the module docstring for the fields."""

    suite: str
    config: dict[str, Any]
    metrics: dict[str, float]
    seed: int
    started: str
    duration_s: float
    series: dict[str, list[float]] = field(default_factory=dict)
    series_step: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    git_sha: str | None = None
    config_hash: str = ""
    artifacts: list[str] = field(default_factory=list)
    status: str = "complete"
    resumed_from: str | None = None
    schema: str = SCHEMA

    def __post_init__(self) -> None:
        if self.suite not in SUITES:
            raise RecordError(f"record field 'suite' must be one of {SUITES}, got {self.suite!r}")
        if not self.config_hash:
            self.config_hash = config_hash(self.config)
        for name, value in self.metrics.items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise RecordError(f"metric '{name}' must be a number or null, got {type(value).__name__}")
        self.metrics = {k: _finite_or_none(v) for k, v in self.metrics.items()}
        self.series = {k: [_finite_or_none(x) for x in v] for k, v in self.series.items()}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with ``schema`` first."""
        d = asdict(self)
        return {"schema": d.pop("schema"), **d}


def _finite_or_none(x: Any) -> float | int | None:
    """JSON has no NaN: non-finite numbers are stored as ``null``."""
    if x is None:
        return None
    if isinstance(x, bool):
        return int(x)
    if isinstance(x, int):
        return x
    xf = float(x)
    return xf if math.isfinite(xf) else None


def semantic_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a config that determines the numbers (``NON_SEMANTIC_KEYS`` removed at the top level)."""
    return {k: v for k, v in config.items() if k not in NON_SEMANTIC_KEYS}


def config_hash(config: Mapping[str, Any]) -> str:
    """Stable 16-hex-digit hash of the semantic part of a resolved config (key order does not matter)."""
    text = json.dumps(semantic_config(config), sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def git_sha(cwd: str | os.PathLike[str] | None = None) -> str | None:
    """The current commit of the checkout that holds this package, ``None`` outside git."""
    here = Path(cwd) if cwd is not None else Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and sha else None


def write_record(run_dir: str | os.PathLike[str], record: RunRecord) -> Path:
    """Write ``run_dir/result.json`` atomically and return its path."""
    return atomic_write_json(Path(run_dir) / RECORD_NAME, record.to_dict())


def read_record(path: str | os.PathLike[str]) -> RunRecord:
    """Read and check one ``result.json`` (or a run folder holding one).

    Raises:
        RecordError: the file is missing, unreadable, not JSON, of another schema, or not complete.
    """
    p = Path(path)
    if p.is_dir():
        p = p / RECORD_NAME
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise RecordError(f"{p}: no run record here") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecordError(f"{p}: unreadable run record ({exc})") from exc
    if not isinstance(raw, dict) or raw.get("schema") != SCHEMA:
        raise RecordError(f"{p}: not a run record of schema {SCHEMA!r}")
    if raw.get("status") != "complete":
        raise RecordError(f"{p}: run record status is {raw.get('status')!r}, not 'complete'")
    _check_field_types(raw, p)
    fields = {k: raw[k] for k in RunRecord.__dataclass_fields__ if k in raw}
    try:
        return RunRecord(**fields)
    except TypeError as exc:
        raise RecordError(f"{p}: run record is missing fields ({exc})") from exc
    except RecordError as exc:
        raise RecordError(f"{p}: {exc}") from exc


# The JSON type of each record field that readers rely on.
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "suite": (str,),
    "config": (dict,),
    "metrics": (dict,),
    "seed": (int,),
    "series": (dict,),
    "series_step": (dict,),
    "labels": (dict,),
    "artifacts": (list,),
    "duration_s": (int, float),
}


def _check_field_types(raw: Mapping[str, Any], p: Path) -> None:
    """Refuse a record whose fields have the wrong JSON types (``"config": 5``), naming the field."""
    for name, types in _FIELD_TYPES.items():
        value = raw.get(name)
        if name in raw and (isinstance(value, bool) or not isinstance(value, types)):
            want = " or ".join(t.__name__ for t in types)
            raise RecordError(f"{p}: run record field '{name}' must be a {want}, got {type(value).__name__}")
    for name, value in (raw.get("series") or {}).items():
        if not isinstance(value, list):
            raise RecordError(f"{p}: run record series '{name}' must be a list, got {type(value).__name__}")


def iter_record_paths(roots: Iterable[str | os.PathLike[str]]) -> Iterator[Path]:
    """Every ``result.json`` below the given folders (or the given files), sorted, temporaries skipped."""
    for root in roots:
        r = Path(root)
        if r.is_file():
            if r.name == RECORD_NAME:
                yield r
            continue
        if not r.is_dir():
            raise RecordError(f"{r}: no such folder")
        for p in sorted(r.rglob(RECORD_NAME)):
            if not p.name.startswith(TMP_PREFIX) and ".hydra" not in p.parts:
                yield p


def find_complete_record(
    roots: Iterable[str | os.PathLike[str]], chash: str
) -> tuple[Path, RunRecord] | None:
    """The first complete record under ``roots`` whose config hash is ``chash``; broken ones are skipped."""
    for p in iter_record_paths(r for r in roots if Path(r).exists()):
        try:
            rec = read_record(p)
        except RecordError:
            continue
        if rec.config_hash == chash:
            return p, rec
    return None
