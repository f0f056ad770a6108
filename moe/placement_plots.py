"""Figures of a placement run: per-layer GPU load before (contiguous) and after placement.

The modelled MoE-layer time per placement is a bar plot of an aggregated table:
``common.plots.bar_plot(table, ["trace", "topology", "placement"], "layer_time_tail_s", path)``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from common.plots import plt, save_png


def plot_gpu_loads(before: np.ndarray, after: np.ndarray, path: str | os.PathLike[str], title: str) -> Path:
    """Two heatmaps, GPU load / the layer's mean load, of ``before`` and ``after`` (int ``[L, G]`` token copies
    per GPU, e.g. ``costs.npz``'s ``contiguous_tokens_per_gpu`` and ``tokens_per_gpu``); PNG, atomic."""
    rel = [np.asarray(a, dtype=np.float64) / np.maximum(np.asarray(a).mean(axis=1, keepdims=True), 1e-12)
           for a in (before, after)]  # fmt: skip
    vmax = max(1.5, float(max(r.max() for r in rel)))
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2), sharey=True)
    for ax, r, name in zip(axes, rel, ("contiguous", "placement"), strict=True):
        im = ax.imshow(r, aspect="auto", cmap="coolwarm", vmin=2.0 - vmax, vmax=vmax, interpolation="nearest")
        ax.set_title(f"{name}: max/mean {float(r.max(axis=1).mean()):.2f} (layer mean)", fontsize=9)
        ax.set_xlabel("GPU (EP rank)")
    axes[0].set_ylabel("MoE layer")
    fig.colorbar(im, ax=axes, label="GPU load / layer mean")
    fig.suptitle(title, fontsize=10)
    return save_png(fig, path)


def plot_gpu_loads_from_costs(
    costs: str | os.PathLike[str], path: str | os.PathLike[str], title: str
) -> Path:
    """``plot_gpu_loads`` from a run's ``costs.npz`` (written by ``runners.moe_place``)."""
    with np.load(costs) as z:
        return plot_gpu_loads(z["contiguous_tokens_per_gpu"], z["tokens_per_gpu"], path, title)
