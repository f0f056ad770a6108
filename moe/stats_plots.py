"""Heatmaps of routing statistics (PNG, matplotlib's non-interactive Agg backend, written atomically)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
import numpy as np  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

from common.plots import save_png  # noqa: E402


def plot_load_heatmap(load: np.ndarray, path: str | os.PathLike[str], title: str = "") -> Path:
    """Heatmap of ``load [L, E]`` relative to each layer's mean (1 = average load), layers on the y axis."""
    p = load.astype(np.float64)
    rel = p / np.maximum(p.mean(axis=1, keepdims=True), 1e-12)
    num_layers, e = rel.shape
    fig, ax = plt.subplots(figsize=(min(4 + e * 0.12, 18), min(2 + num_layers * 0.18, 14)))
    im = ax.imshow(rel, aspect="auto", cmap="magma", interpolation="nearest")
    ax.set_xlabel("expert")
    ax.set_ylabel("MoE layer")
    ax.set_title(title or "expert load / layer mean")
    fig.colorbar(im, ax=ax, label="load / mean load")
    return save_png(fig, path, dpi=110)


def plot_affinity_heatmaps(
    lift: np.ndarray,
    scores: np.ndarray,
    path: str | os.PathLike[str],
    layers: Sequence[int] | None = None,
    title: str = "",
) -> Path:
    """Panels of ``lift[l] [E, E]`` (P(e2 | e1) / P(e2); 1 = independent, white), log colour scale symmetric
    around 1 (red: follows more often than popularity predicts, blue: less often), for a few layer
    boundaries (default: first, middle, last), plus the affinity score of every boundary.

    Args:
        lift: ``affinity_lift(R)`` float ``[L-1, E, E]``.
        scores: ``affinity_scores(R)`` float ``[L-1]``.
        path: the PNG to write.
        layers: boundaries to draw (index l means layer l -> l+1).
    """
    n = lift.shape[0]
    if layers is None:
        layers = sorted({0, n // 2, n - 1}) if n else []
    fig, axes = plt.subplots(
        1, len(layers) + 1, figsize=(4.6 * (len(layers) + 1), 4.4), squeeze=False, layout="constrained"
    )
    positive = lift[lift > 0]
    lo = float(positive.min()) if positive.size else 0.1
    hi = float(lift.max()) if lift.size else 10.0
    span = float(np.clip(max(hi, 1.0 / max(lo, 1e-12)), 1.5, 100.0))  # symmetric around 1 on a log scale
    norm = LogNorm(vmin=1.0 / span, vmax=span)
    im = None
    for ax, layer in zip(axes[0], layers, strict=False):
        shown = np.clip(lift[layer], norm.vmin, norm.vmax)
        im = ax.imshow(shown, cmap="RdBu_r", norm=norm, interpolation="nearest")
        ax.set_title(f"layer {layer} -> {layer + 1}  (score {scores[layer]:.3f})")
        ax.set_xlabel("expert in next layer")
        ax.set_ylabel("expert in layer")
    if im is not None:
        fig.colorbar(im, ax=axes[0][: len(layers)].tolist(), label="P(next | prev) / P(next), clipped")
    ax = axes[0][-1]
    ax.plot(np.arange(n), scores, marker="o", ms=3)
    ax.set_xlabel("layer boundary l (l -> l+1)")
    ax.set_ylabel("affinity score I / H(next)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    fig.suptitle(title or "cross-layer affinity")
    return save_png(fig, path, dpi=110)
