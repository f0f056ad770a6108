"""The paper-style comparison table of placement runs (``runners.moe mode=place`` records).

One row per (trace, topology, placement): mean and standard deviation over seeds of the reductions against
the contiguous placement measured in the same run (token-processing tail and mean, all-to-all tail and mean,
MoE-layer time), the MoE-layer speedup, balance and cross-GPU volume, next to the paper's reported numbers
(``moe.paper_numbers``) where the paper has them (MoETuner on its two settings).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from common.aggregate import mean_std
from common.atomic import atomic_write_text
from common.plots import bar_plot
from moe.paper_numbers import PAPER_METRICS, paper_value
from moe.placement_plots import plot_gpu_loads_from_costs

# Our metrics in the table, in column order (all from the run record's ``metrics``).
TABLE_METRICS = (
    "token_time_tail_reduction",
    "token_time_mean_reduction",
    "a2a_time_tail_reduction",
    "a2a_time_mean_reduction",
    "layer_time_tail_reduction",
    "speedup_vs_contiguous",
    "balancedness_mean",
    "cross_gpu_tokens_vs_contiguous",
    "layer_time_tail_s",
)  # wall-clock solve times are machine-dependent: results/<mode>/timings/, not these tracked tables
PERCENT = {m for m in TABLE_METRICS if m.endswith("_reduction")}
CSV_NAME = "moe_comparison.csv"
MD_NAME = "moe_comparison.md"


def placement_label(placement_cfg: Mapping[str, Any]) -> str:
    """The name a placement has in tables: its ``label`` if the config gives one, else its ``name``."""
    return str(placement_cfg.get("label") or placement_cfg["name"])


def trace_label(trace_cfg: Mapping[str, Any]) -> str:
    """A short name of a ``trace`` config node: its ``name``, with the synthetic ``preset`` appended."""
    name = str(trace_cfg.get("name") or Path(str(trace_cfg.get("path", "trace"))).stem)
    preset = trace_cfg.get("preset")
    return f"{name}:{preset}" if preset else name


def _is_place_record(rec: Mapping[str, Any]) -> bool:
    cfg = rec.get("config") or {}
    return (
        rec.get("suite") == "moe"
        and cfg.get("mode", "place") == "place"
        and isinstance(rec.get("metrics"), Mapping)
        and "speedup_vs_contiguous" in rec["metrics"]
    )


def _record_row(rec: Mapping[str, Any]) -> dict[str, Any]:
    cfg = rec["config"]
    row = {
        "trace": trace_label(cfg.get("trace", {})),
        "topology": str(cfg["topology"]["name"]),
        "placement": placement_label(cfg["placement"]),
        "seed": rec.get("seed"),
        "status": str((rec.get("labels") or {}).get("status") or ""),
    }
    return row | {m: _finite_or_nan(rec["metrics"].get(m)) for m in TABLE_METRICS}


def status_counts(statuses: pd.Series) -> str:
    """How the seeds' solves ended, e.g. ``optimal 2, time_limit 1``; empty for placements without a solver."""
    counts = statuses[statuses != ""].value_counts()
    return ", ".join(f"{name} {n}" for name, n in sorted(counts.items()))


def comparison_rows(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """The comparison table from run-record dicts (others are ignored).

    One row per (trace, topology, placement): ``seeds`` (distinct seeds aggregated), ``<metric>_mean`` and
    ``<metric>_std`` (``common.aggregate.mean_std``: NaN std for one seed) for ``TABLE_METRICS``, and
    ``paper_<metric>`` for the paper's numbers (NaN where the paper has none). Within a trace and topology,
    contiguous (the baseline) comes first, then the placements by increasing mean speedup.
    """
    frame = pd.DataFrame([_record_row(r) for r in records if _is_place_record(r)])
    if frame.empty:
        return frame
    keys = ["trace", "topology", "placement"]
    grouped = frame.groupby(keys, sort=True)
    table = grouped["seed"].nunique().rename("seeds").to_frame()
    table["status"] = grouped["status"].agg(status_counts)
    for m in TABLE_METRICS:
        stats = grouped[m].agg(lambda v: mean_std(v))
        table[f"{m}_mean"] = [ms[0] for ms in stats]
        table[f"{m}_std"] = [ms[1] for ms in stats]
    table = table.reset_index()
    for m in PAPER_METRICS:
        vals = [paper_value(t, p, m) for t, p in zip(table["topology"], table["placement"], strict=True)]
        table[f"paper_{m}"] = [math.nan if v is None else v for v in vals]
    baseline_last = table["placement"] != "contiguous"
    order = table.assign(_b=baseline_last).sort_values(
        ["trace", "topology", "_b", "speedup_vs_contiguous_mean", "placement"], kind="stable"
    )
    return order.drop(columns="_b").reset_index(drop=True)


def _finite_or_nan(x: Any) -> float:
    ok = isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
    return float(x) if ok else math.nan


def _cell(mean: float, std: float, percent: bool) -> str:
    if math.isnan(mean):
        return ""
    scale, unit = (100.0, "%") if percent else (1.0, "")
    text = f"{mean * scale:.1f}{unit}" if percent else f"{mean:.3g}"
    if not math.isnan(std):
        text += f" ± {std * scale:.1f}" if percent else f" ± {std:.2g}"
    return text


def rows_to_markdown(table: pd.DataFrame) -> str:
    """A Markdown table: ours (mean ± std over seeds) with the paper's number in brackets where it has one."""
    shown = table[["trace", "topology", "placement"]].copy()
    shown["seeds"] = table["seeds"].astype(str)
    shown["status"] = table["status"]
    for m in TABLE_METRICS:
        cells = []
        for _, row in table.iterrows():
            text = _cell(row[f"{m}_mean"], row[f"{m}_std"], m in PERCENT)
            paper = row.get(f"paper_{m}", math.nan)
            if not math.isnan(paper):
                text += f" [paper: {paper * 100:.1f}%]" if m in PERCENT else f" [paper: {paper:.3f}]"
            cells.append(text)
        shown[m] = cells
    note = (
        "Reductions are 1 - placement / contiguous (higher is better), measured in the same run; "
        "[paper: x] is MoETuner's reported value (its speedup is end-to-end, ours is the MoE layers only)."
    )
    return f"{note}\n\n{shown.to_markdown(index=False, disable_numparse=True)}\n"


def moe_comparison_table(records: Iterable[Mapping[str, Any]], out: str | os.PathLike[str]) -> list[Path]:
    """Write ``moe_comparison.csv`` and ``moe_comparison.md`` into ``out`` (atomically); returns their paths.

    Writes nothing and returns ``[]`` when no record is a placement run.
    """
    table = comparison_rows(records)
    if table.empty:
        return []
    out_dir = Path(out)
    return [
        atomic_write_text(out_dir / CSV_NAME, table.to_csv(index=False, na_rep="")),
        atomic_write_text(out_dir / MD_NAME, rows_to_markdown(table)),
    ]


def moe_comparison_report(records: Iterable[Mapping[str, Any]], out: str | os.PathLike[str]) -> list[Path]:
    """The comparison table (``moe_comparison_table``) and two figures in ``out``:

    - ``layer_time_<trace>.png``: the modelled MoE-layer time (tail over GPUs, summed over layers) of every
      placement, mean ± std over seeds;
    - ``gpu_load_<trace>.png``: per-layer GPU load under contiguous and under the fastest placement (its
      lowest seed), from that run's ``costs.npz``.
    """
    records = list(records)
    paths = moe_comparison_table(records, out)
    table = comparison_rows(records)
    if table.empty:
        return paths
    out_dir = Path(out)
    for trace, rows in table.groupby("trace", sort=True):
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(trace))
        title = f"{trace}: modelled MoE-layer time (s, lower is better)"
        paths.append(
            bar_plot(rows, ["placement"], "layer_time_tail_s", out_dir / f"layer_time_{name}.png", title)
        )
        best = rows.sort_values("speedup_vs_contiguous_mean", kind="stable").iloc[-1]["placement"]
        run = _lowest_seed_run(records, trace, best)
        costs = Path(run["path"]).parent / "costs.npz" if run and run.get("path") else None
        if costs is not None and costs.is_file():
            paths.append(plot_gpu_loads_from_costs(costs, out_dir / f"gpu_load_{name}.png",
                                                   f"{trace}: contiguous (left) vs {best} (right)"))  # fmt: skip
    return paths


def _lowest_seed_run(
    records: list[Mapping[str, Any]], trace: str, placement: str
) -> Mapping[str, Any] | None:
    runs = [
        r
        for r in records
        if _is_place_record(r)
        and trace_label(r["config"].get("trace", {})) == trace
        and placement_label(r["config"]["placement"]) == placement
    ]
    return min(runs, key=lambda r: r.get("seed", 0), default=None)
