"""The paper-style comparison table of placement runs (``runners.moe mode=place`` records).

One row per (trace, topology, placement): mean and standard deviation over seeds of the reductions against
the contiguous placement measured in the same run (token-processing tail and mean, all-to-all tail and mean,
MoE-layer time), the MoE-layer speedup, balance and cross-GPU volume, next to the paper's reported numbers
(``moe.paper_numbers``) where the paper has them (MoETuner on its two settings).
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from common.atomic import atomic_write_text
from moe.paper_numbers import PAPER_METRICS, paper_value

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
    "solve_time_s",
)
PERCENT = {m for m in TABLE_METRICS if m.endswith("_reduction")}
PLACEMENT_ORDER = (
    "contiguous", "round_robin", "random", "greedy", "eplb", "exflow", "moetuner", "moetuner+replicas",
)  # fmt: skip
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


def comparison_rows(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows of the comparison table from run-record dicts (others are ignored).

    Each row: ``trace``, ``topology``, ``placement``, ``seeds`` (runs aggregated), ``<metric>_mean`` and
    ``<metric>_std`` (sample std over seeds; NaN for one seed) for ``TABLE_METRICS``, and ``paper_<metric>``
    for the paper's numbers (NaN where the paper has none).
    """
    groups: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for rec in records:
        if not _is_place_record(rec):
            continue
        cfg = rec["config"]
        key = (
            trace_label(cfg.get("trace", {})),
            str(cfg["topology"]["name"]),
            placement_label(cfg["placement"]),
        )
        groups.setdefault(key, []).append(rec)

    def order(key: tuple[str, str, str]) -> tuple[str, str, int, str]:
        p = key[2]
        return key[0], key[1], PLACEMENT_ORDER.index(p) if p in PLACEMENT_ORDER else len(PLACEMENT_ORDER), p

    rows = []
    for key in sorted(groups, key=order):
        recs = groups[key]
        row: dict[str, Any] = {"trace": key[0], "topology": key[1], "placement": key[2]}
        row["seeds"] = len({r.get("seed") for r in recs})
        for m in TABLE_METRICS:
            vals = np.array([r["metrics"][m] for r in recs if _finite(r["metrics"].get(m))], dtype=np.float64)
            row[f"{m}_mean"] = float(vals.mean()) if vals.size else math.nan
            row[f"{m}_std"] = float(vals.std(ddof=1)) if vals.size > 1 else math.nan
        for m in PAPER_METRICS:
            v = paper_value(key[1], key[2], m)
            row[f"paper_{m}"] = math.nan if v is None else v
        rows.append(row)
    return rows


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def rows_to_csv(rows: list[dict[str, Any]]) -> str:
    """CSV text (NaN written as an empty cell)."""
    if not rows:
        return ""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()})
    return buf.getvalue()


def _cell(mean: float, std: float, percent: bool) -> str:
    if math.isnan(mean):
        return ""
    scale, unit = (100.0, "%") if percent else (1.0, "")
    text = f"{mean * scale:.1f}{unit}" if percent else f"{mean:.3g}"
    if not math.isnan(std):
        text += f" ± {std * scale:.1f}" if percent else f" ± {std:.2g}"
    return text


def rows_to_markdown(rows: list[dict[str, Any]]) -> str:
    """A Markdown table: ours (mean ± std over seeds) with the paper's number in brackets where it has one."""
    head = ["trace", "topology", "placement", "seeds", *TABLE_METRICS]
    lines = [
        "Reductions are 1 - placement / contiguous (higher is better), measured in the same run; "
        "[paper: x] is MoETuner's reported value (its speedup is end-to-end, ours is the MoE layers only).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for row in rows:
        cells = [row["trace"], row["topology"], row["placement"], str(row["seeds"])]
        for m in TABLE_METRICS:
            text = _cell(row[f"{m}_mean"], row[f"{m}_std"], m in PERCENT)
            paper = row.get(f"paper_{m}", math.nan)
            if not math.isnan(paper):
                text += f" [paper: {paper * 100:.1f}%]" if m in PERCENT else f" [paper: {paper:.3f}]"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def moe_comparison_table(records: Iterable[Mapping[str, Any]], out: str | os.PathLike[str]) -> list[Path]:
    """Write ``moe_comparison.csv`` and ``moe_comparison.md`` into ``out`` (atomically); returns their paths.

    Writes nothing and returns ``[]`` when no record is a placement run.
    """
    rows = comparison_rows(records)
    if not rows:
        return []
    out_dir = Path(out)
    return [
        atomic_write_text(out_dir / CSV_NAME, rows_to_csv(rows)),
        atomic_write_text(out_dir / MD_NAME, rows_to_markdown(rows)),
    ]
