"""The GGEUR comparison table: accuracy without and with GGEUR, per setting, from run-record dicts.

One row per (dataset, partition setting): mean ± std over seeds of ``acc_local_mean`` (the mean accuracy of
the per-client classifiers on the global test set) for ``augment=none`` and ``augment=ggeur``, the gain in
points, and how many seeds gave a gain. The paper's numbers are federated (FedAvg after GGEUR, CLIP
features, CIFAR-100 and Digits); they are shown for scale only, next to the setting that resembles them.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from common.atomic import atomic_write_text

# The paper's federated FedAvg accuracies (%) without / with GGEUR (papers.md section 3, unverified there).
PAPER_LABEL_SKEW = {0.5: (81.41, 83.31), 0.1: (68.22, 77.70), 0.01: (58.71, 75.72)}  # CIFAR-100, 10 clients
PAPER_DIGITS_GGEUR = 82.36  # FedAvg + GGEUR, Digits, average over domains

CSV_NAME = "ggeur_comparison.csv"
MD_NAME = "ggeur_comparison.md"


def _setting(cfg: Mapping[str, Any]) -> tuple[str, str]:
    part = cfg.get("partition", {})
    method = str(part.get("method", "?"))
    if method in ("dirichlet", "domain_dirichlet"):
        return method, f"beta={part.get('beta')}"
    return method, f"fraction={part.get('fraction')}"


def _mean_std(values: list[float]) -> tuple[float, float]:
    m = math.fsum(values) / len(values)
    s = math.sqrt(math.fsum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, s


def comparison_rows(
    records: Iterable[Mapping[str, Any]], metric: str = "acc_local_mean"
) -> list[dict[str, Any]]:
    """Rows (dicts) pairing ``augment=none`` and ``augment=ggeur`` runs of the same setting and seed."""
    cells: dict[tuple[str, str, str], dict[str, dict[int, float]]] = {}
    for rec in records:
        cfg = rec.get("config") or {}
        value = (rec.get("metrics") or {}).get(metric)
        if rec.get("suite") != "fed" or value is None:
            continue
        kind = str((cfg.get("augment") or {}).get("kind", "none"))
        key = (str((cfg.get("dataset") or {}).get("name", "?")), *_setting(cfg))
        cells.setdefault(key, {}).setdefault(kind, {})[int(rec.get("seed", 0))] = float(value)
    rows = []
    for (dataset, method, setting), by_kind in sorted(cells.items()):
        none, ggeur = by_kind.get("none", {}), by_kind.get("ggeur", {})
        row: dict[str, Any] = {"dataset": dataset, "partition": method, "setting": setting}
        for name, vals in (("none", none), ("ggeur", ggeur)):
            if vals:
                row[f"acc_{name}_mean"], row[f"acc_{name}_std"] = _mean_std([100 * v for v in vals.values()])
            row[f"seeds_{name}"] = len(vals)
        paired = sorted(set(none) & set(ggeur))
        if paired:
            gains = [100 * (ggeur[s] - none[s]) for s in paired]
            row["gain_pts_mean"], row["gain_pts_std"] = _mean_std(gains)
            row["seeds_with_gain"] = f"{sum(g > 0 for g in gains)}/{len(gains)}"
        row["paper_reference"] = _paper_reference(dataset, method, setting)
        rows.append(row)
    return rows


def _paper_reference(dataset: str, method: str, setting: str) -> str:
    if method == "dirichlet" and setting.startswith("beta="):
        try:
            beta = float(setting.split("=", 1)[1])
        except ValueError:
            return ""
        if beta in PAPER_LABEL_SKEW:
            a, b = PAPER_LABEL_SKEW[beta]
            return f"CIFAR-100 FedAvg {a:.2f} -> {b:.2f} (+{b - a:.2f})"
    if dataset == "digits" and method == "domain":
        return f"Digits FedAvg+GGEUR {PAPER_DIGITS_GGEUR:.2f}"
    return ""


COLUMNS = (
    "dataset", "partition", "setting", "acc_none_mean", "acc_none_std", "acc_ggeur_mean", "acc_ggeur_std",
    "gain_pts_mean", "gain_pts_std", "seeds_with_gain", "paper_reference",
)  # fmt: skip


def fed_comparison_table(records: Iterable[Mapping[str, Any]], out: str | os.PathLike[str]) -> list[Path]:
    """Write ``ggeur_comparison.csv`` and ``.md`` into folder ``out`` (atomically); ``[]`` if no fed run."""
    rows = comparison_rows(records)
    if not rows:
        return []
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    head = (
        "| dataset | partition | setting | acc none (%) | acc GGEUR (%) | gain (pts) | seeds with gain "
        "| paper, federated (for scale) |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for r in rows:

        def ms(prefix: str, r: dict[str, Any] = r) -> str:
            m = r.get(f"{prefix}_mean")
            return "" if m is None else f"{m:.2f} ± {r[f'{prefix}_std']:.2f}"

        lines.append(
            f"| {r['dataset']} | {r['partition']} | {r['setting']} | {ms('acc_none')} | {ms('acc_ggeur')} "
            f"| {ms('gain_pts')} | {r.get('seeds_with_gain', '')} | {r['paper_reference']} |"
        )
    out_dir = Path(out)
    return [
        atomic_write_text(out_dir / CSV_NAME, buf.getvalue()),
        atomic_write_text(out_dir / MD_NAME, "\n".join(lines) + "\n"),
    ]
