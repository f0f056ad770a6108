"""Bar and line plots (PNG, matplotlib's Agg backend) from aggregated rows and series."""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from common.atomic import atomic_write_bytes  # noqa: E402


def save_png(fig: plt.Figure, path: str | os.PathLike[str], dpi: int = 120) -> Path:
    """Render ``fig`` to PNG in memory, close it, and write the bytes to ``path`` atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def bar_plot(
    table: pd.DataFrame,
    by: Sequence[str],
    metric: str,
    path: str | os.PathLike[str],
    title: str | None = None,
) -> Path:
    """One bar per group of a ``common.aggregate.group`` table (mean, std as the error bar); PNG, atomic."""
    rows = table[table[f"{metric}_mean"].notna()]
    labels = [", ".join(str(v) for v in vals) for vals in rows[list(by)].itertuples(index=False)]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(rows) + 2), 3.6))
    err = rows[f"{metric}_std"].fillna(0.0)
    ax.bar(range(len(rows)), rows[f"{metric}_mean"], yerr=err, capsize=3)
    ax.set_xticks(range(len(rows)), labels, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel(metric)
    ax.set_title(title or metric)
    ax.grid(axis="y", alpha=0.3)
    return save_png(fig, path)


def line_plot(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | os.PathLike[str],
    xlabel: str = "step",
    ylabel: str = "value",
    title: str | None = None,
    first_step: int = 0,
) -> Path:
    """One line per label (mean, shaded ± std) over steps ``first_step..first_step+n-1`` (e.g. 1 for
    federated rounds); written atomically as PNG."""
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for label, (mean, std) in curves.items():
        x = list(range(first_step, first_step + len(mean)))
        ax.plot(x, mean, label=label, linewidth=1.4)
        lo = [m - s for m, s in zip(mean, std, strict=True)]
        hi = [m + s for m, s in zip(mean, std, strict=True)]
        ax.fill_between(x, lo, hi, alpha=0.15)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title or ylabel)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=7)
    return save_png(fig, path)
