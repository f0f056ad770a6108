"""Turn run records into tables: group by config keys, mean and std over seeds, CSV and Markdown.

Records are read from any mix of single-run folders and multirun trees. Only complete records count;
temporary files (``.tmp-*``) and broken records are skipped (and reported), never half-read.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.atomic import atomic_write_text
from common.errors import RecordError
from common.log import get_logger
from common.records import RunRecord, iter_record_paths, read_record

MISSING = "-"


@dataclass
class LoadedRecord:
    """A complete record, where it was read from, and its config flattened to dotted keys."""

    path: Path
    record: RunRecord
    flat: dict[str, Any]


@dataclass
class Row:
    """One group of runs: the grouping values, how many runs, and mean/std of every metric."""

    key: dict[str, Any]
    n: int
    mean: dict[str, float] = field(default_factory=dict)
    std: dict[str, float] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=list)


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists are kept as values."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def load_records(roots: Iterable[str | os.PathLike[str]]) -> tuple[list[LoadedRecord], list[str]]:
    """Read every complete record below ``roots``.

    Returns:
        (records, problems): the records sorted by path, and one line per record that was skipped.

    Raises:
        RecordError: a root does not exist or is not a folder/record file.
    """
    loaded: list[LoadedRecord] = []
    problems: list[str] = []
    for path in iter_record_paths(list(roots)):
        try:
            rec = read_record(path)
        except RecordError as exc:
            problems.append(str(exc))
            continue
        flat = flatten(rec.config)
        flat.setdefault("suite", rec.suite)
        loaded.append(LoadedRecord(path=path, record=rec, flat=flat))
    return loaded, problems


def _hashable(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _hashable(x)) for k, x in v.items()))
    return v


def group(
    records: Sequence[LoadedRecord], by: Sequence[str], metrics: Sequence[str] | None = None
) -> list[Row]:
    """Group records by the dotted config keys ``by``; mean and sample std (ddof=1) of each metric.

    Args:
        records: from ``load_records``.
        by: dotted config keys (``placement.name``, ``trace.preset``) or ``suite``. ``seed`` is never a
            grouping key unless named, so groups average over seeds.
        metrics: metric names to keep; default all metrics seen. A metric missing in some runs of a group is
            averaged over the runs that have it.

    Raises:
        RecordError: a ``by`` key is absent from every record, or a named metric from every record.
    """
    for key in by:
        if records and not any(key in r.flat for r in records):
            raise RecordError(f"--by key '{key}' is in no run's config (try one of: {_some_keys(records)})")
    if metrics is None:
        seen: dict[str, None] = {}
        for r in records:
            for m in r.record.metrics:
                seen.setdefault(m, None)
        metrics = list(seen)
    else:
        for m in metrics:
            if records and not any(m in r.record.metrics for r in records):
                raise RecordError(f"metric '{m}' is in no run record")
    groups: dict[tuple[Any, ...], list[LoadedRecord]] = {}
    for r in records:
        k = tuple(_hashable(r.flat.get(key, MISSING)) for key in by)
        groups.setdefault(k, []).append(r)
    rows: list[Row] = []
    for k in sorted(groups, key=lambda t: tuple(str(x) for x in t)):
        members = groups[k]
        row = Row(
            key=dict(zip(by, k, strict=True)), n=len(members), seeds=sorted(m.record.seed for m in members)
        )
        for m in metrics:
            vals = [float(v) for r in members if (v := r.record.metrics.get(m)) is not None]
            if not vals:
                continue
            mean = math.fsum(vals) / len(vals)
            std = (
                math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
                if len(vals) > 1
                else 0.0
            )
            row.mean[m], row.std[m] = mean, std
        rows.append(row)
    return rows


def _some_keys(records: Sequence[LoadedRecord], limit: int = 12) -> str:
    keys = sorted({k for r in records for k in r.flat})
    return ", ".join(keys[:limit]) + (", ..." if len(keys) > limit else "")


def metric_names(rows: Sequence[Row]) -> list[str]:
    names: dict[str, None] = {}
    for r in rows:
        for m in r.mean:
            names.setdefault(m, None)
    return list(names)


def to_csv(rows: Sequence[Row], by: Sequence[str]) -> str:
    """CSV with columns ``by..., n, <metric>_mean, <metric>_std, ...``."""
    names = metric_names(rows)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*by, "n", *[f"{m}_{s}" for m in names for s in ("mean", "std")]])
    for r in rows:
        cells: list[Any] = [r.key[k] for k in by] + [r.n]
        for m in names:
            cells += [repr(r.mean[m]) if m in r.mean else "", repr(r.std[m]) if m in r.std else ""]
        w.writerow(cells)
    return buf.getvalue()


def fmt_number(x: float, digits: int = 4) -> str:
    """Short human form: 4 significant digits, no exponent for ordinary magnitudes."""
    if x == 0 or 1e-3 <= abs(x) < 1e6:
        return f"{x:.{digits}g}" if abs(x) >= 1 else f"{x:.{digits}f}".rstrip("0").rstrip(".")
    return f"{x:.{digits - 1}e}"


def to_markdown(rows: Sequence[Row], by: Sequence[str], metrics: Sequence[str] | None = None) -> str:
    """A Markdown table: one row per group, ``mean ± std`` per metric (``± std`` left out when n = 1)."""
    names = list(metrics) if metrics else metric_names(rows)
    head = [*by, "n", *names]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        cells = [str(r.key[k]) for k in by] + [str(r.n)]
        for m in names:
            if m not in r.mean:
                cells.append("")
            elif r.n > 1:
                cells.append(f"{fmt_number(r.mean[m])} ± {fmt_number(r.std[m])}")
            else:
                cells.append(fmt_number(r.mean[m]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_tables(rows: Sequence[Row], by: Sequence[str], out_prefix: str | os.PathLike[str]) -> list[Path]:
    """Write ``<out>.csv`` and ``<out>.md`` atomically; returns their paths."""
    out = Path(out_prefix)
    paths = [
        atomic_write_text(out.with_name(out.name + ".csv"), to_csv(rows, by)),
        atomic_write_text(out.with_name(out.name + ".md"), to_markdown(rows, by)),
    ]
    get_logger("aggregate").info(f"tables: {', '.join(str(p) for p in paths)}")
    return paths


def series_by_group(
    records: Sequence[LoadedRecord], by: Sequence[str], series: str
) -> dict[str, tuple[list[float], list[float]]]:
    """Per group: the step-wise mean and std of one series over the group's runs (truncated to the shortest).

    Returns:
        ``label -> (mean[steps], std[steps])``; the label joins the group's values with ``, ``.
    """
    buckets: dict[str, list[list[float]]] = {}
    for r in records:
        vals = r.record.series.get(series)
        if not vals:
            continue
        label = ", ".join(f"{k}={r.flat.get(k, MISSING)}" for k in by) or "all"
        buckets.setdefault(label, []).append([math.nan if v is None else float(v) for v in vals])
    out: dict[str, tuple[list[float], list[float]]] = {}
    for label, runs in sorted(buckets.items()):
        steps = min(len(v) for v in runs)
        cols = [[run[i] for run in runs] for i in range(steps)]
        means = [math.fsum(c) / len(c) for c in cols]
        stds = [
            math.sqrt(math.fsum((x - m) ** 2 for x in c) / (len(c) - 1)) if len(c) > 1 else 0.0
            for c, m in zip(cols, means, strict=True)
        ]
        out[label] = (means, stds)
    return out
