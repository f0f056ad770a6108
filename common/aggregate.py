"""Turn run records into tables: group by config keys, mean and std over seeds, CSV and Markdown (pandas).

The one rule for averaging over runs, used by every table of the suite: ``mean_std`` (the mean, and the
sample standard deviation with ddof=1, undefined (NaN) for a single run; missing values are left out).

Records are read from any mix of single-run folders and multirun trees. Only complete records count;
temporary files (``.tmp-*``) and broken records are skipped (and reported), never half-read.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

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
        flat.update(flatten(rec.labels, "labels."))
        flat.setdefault("suite", rec.suite)
        loaded.append(LoadedRecord(path=path, record=rec, flat=flat))
    return loaded, problems


def mean_std(values: Iterable[Any]) -> tuple[float, float]:
    """The suite's one averaging rule: ``(mean, sample std)`` of the finite values (``None``/NaN dropped).

    Mean by ``math.fsum`` (exact rounding, independent of order); std with ddof=1, NaN for one value; both
    NaN for none.
    """
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return math.nan, math.nan
    mean = math.fsum(vals) / len(vals)
    if len(vals) == 1:
        return mean, math.nan
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (len(vals) - 1))


def _mean(values: pd.Series) -> float:
    return mean_std(values)[0]


def _std(values: pd.Series) -> float:
    return mean_std(values)[1]


def _label(v: Any) -> str:
    """A grouping value as the text tables show (lists as tuples, so that they can be grouped)."""
    if isinstance(v, list):
        return str(tuple(v))
    return str(v)


def records_frame(records: Sequence[LoadedRecord], by: Sequence[str]) -> pd.DataFrame:
    """One row per record: the ``by`` keys as text, ``seed``, and every metric (NaN where undefined)."""
    rows = [
        {**{k: _label(r.flat.get(k, MISSING)) for k in by}, "seed": r.record.seed, **_metrics(r)}
        for r in records
    ]
    return pd.DataFrame(rows, columns=list(dict.fromkeys([*by, "seed"])) if not rows else None)


def _metrics(r: LoadedRecord) -> dict[str, float]:
    return {f"metric:{k}": (np.nan if v is None else float(v)) for k, v in r.record.metrics.items()}


def group(
    records: Sequence[LoadedRecord], by: Sequence[str], metrics: Sequence[str] | None = None
) -> pd.DataFrame:
    """Group records by the dotted config keys ``by``: ``n`` and ``<metric>_mean`` / ``<metric>_std``.

    Args:
        records: from ``load_records``.
        by: dotted config keys (``placement.label``, ``trace.preset``) or ``suite``. ``seed`` is never a
            grouping key unless named, so groups average over seeds.
        metrics: metric names to keep; default all metrics seen, in order of appearance. A metric missing in
            some runs of a group is averaged over the runs that have it (``mean_std``).

    Returns:
        One row per group, sorted by the keys' text: columns ``by..., n, <m>_mean, <m>_std, ...``.

    Raises:
        RecordError: a ``by`` key is absent from every record, or a named metric from every record.
    """
    for key in by:
        if records and not any(key in r.flat for r in records):
            raise RecordError(f"--by key '{key}' is in no run's config (try one of: {_some_keys(records)})")
    seen = list(dict.fromkeys(m for r in records for m in r.record.metrics))
    for m in metrics or []:
        if records and m not in seen:
            raise RecordError(f"metric '{m}' is in no run record")
    names = list(metrics) if metrics is not None else seen
    frame = records_frame(records, by)
    keys = list(by) or ["_all"]
    if not by:
        frame["_all"] = "all"
    grouped = frame.groupby(keys, sort=True, dropna=False)
    out = grouped.size().rename("n").to_frame()
    cols = [f"metric:{m}" for m in names if f"metric:{m}" in frame]
    if cols:
        stats = grouped[cols].agg([_mean, _std])
        stats.columns = [f"{c.removeprefix('metric:')}_{s.strip('_')}" for c, s in stats.columns]
        out = out.join(stats)
    out = out.reset_index()
    return out.drop(columns=["_all"]) if not by else out


def _some_keys(records: Sequence[LoadedRecord], limit: int = 12) -> str:
    keys = sorted({k for r in records for k in r.flat})
    return ", ".join(keys[:limit]) + (", ..." if len(keys) > limit else "")


def metric_names(table: pd.DataFrame) -> list[str]:
    """The metrics of a ``group`` table, in column order."""
    return [c.removesuffix("_mean") for c in table.columns if c.endswith("_mean")]


def fmt_number(x: float, digits: int = 4) -> str:
    """Short human form: 4 significant digits, no exponent for ordinary magnitudes."""
    if x == 0 or 1e-3 <= abs(x) < 1e6:
        return f"{x:.{digits}g}" if abs(x) >= 1 else f"{x:.{digits}f}".rstrip("0").rstrip(".")
    return f"{x:.{digits - 1}e}"


def mean_std_text(mean: float, std: float, fmt: Any = fmt_number) -> str:
    """``mean ± std``; ``mean`` alone when std is undefined; empty when the mean is."""
    if math.isnan(mean):
        return ""
    return fmt(mean) if math.isnan(std) else f"{fmt(mean)} ± {fmt(std)}"


def to_markdown(table: pd.DataFrame, by: Sequence[str], metrics: Sequence[str] | None = None) -> str:
    """A Markdown table (``DataFrame.to_markdown``): one row per group, ``mean ± std`` per metric."""
    names = [m for m in (metrics or metric_names(table)) if f"{m}_mean" in table]
    shown = table[[*by, "n"]].astype(str)
    for m in names:
        shown[m] = [mean_std_text(a, b) for a, b in zip(table[f"{m}_mean"], table[f"{m}_std"], strict=True)]
    return shown.to_markdown(index=False, disable_numparse=True) + "\n"


def write_tables(table: pd.DataFrame, by: Sequence[str], out_prefix: str | os.PathLike[str]) -> list[Path]:
    """Write ``<out>.csv`` (NaN as an empty cell) and ``<out>.md`` atomically; returns their paths."""
    out = Path(out_prefix)
    paths = [
        atomic_write_text(out.with_name(out.name + ".csv"), table.to_csv(index=False, na_rep="")),
        atomic_write_text(out.with_name(out.name + ".md"), to_markdown(table, by)),
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
        pairs = [mean_std(run[i] for run in runs) for i in range(steps)]
        out[label] = ([m for m, _ in pairs], [0.0 if math.isnan(s) else s for _, s in pairs])
    return out
