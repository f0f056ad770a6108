"""The figure of ``mode=replan`` sweeps: modelled MoE-layer time per served window, one line per policy.

One panel per (placement, drift rate) of a trace; the records are ``runners.moe mode=replan`` run records
(their ``series['layer_time_tail_s']`` per served window; seeds are averaged).
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from common.plots import plt, save_png
from moe.replan import POLICIES


def _is_replan(rec: Mapping[str, Any]) -> bool:
    cfg = rec.get("config") or {}
    return (
        rec.get("suite") == "moe"
        and cfg.get("mode") == "replan"
        and "layer_time_tail_s" in (rec.get("series") or {})
    )


Key = tuple[str, str, float]  # (trace on topology, placement, drift)


def window_curves(records: Iterable[Mapping[str, Any]]) -> dict[Key, dict[str, np.ndarray]]:
    """``{(trace on topology, placement, drift): {policy: float [windows]}}``, mean over seeds of the
    per-window time."""
    acc: dict[Key, dict[str, list[list[float]]]] = defaultdict(lambda: defaultdict(list))
    for rec in filter(_is_replan, records):
        cfg = rec["config"]
        where = f"{cfg['trace'].get('name')} on {(cfg.get('topology') or {}).get('name', '?')}"
        key = (where, str(cfg["placement"].get("label") or cfg["placement"]["name"]),
               float(cfg["trace"].get("drift") or 0.0))  # fmt: skip
        acc[key][str(cfg["replan"]["policy"])].append(rec["series"]["layer_time_tail_s"])
    return {k: {p: np.mean(np.asarray(v, dtype=float), axis=0) for p, v in d.items()} for k, d in acc.items()}


def replan_report(records: Iterable[Mapping[str, Any]], out: str | os.PathLike[str]) -> list[Path]:
    """``layer_time_per_window_<trace>_on_<topology>.png`` in ``out``: rows = placements, columns = drift
    rates."""
    curves = window_curves(list(records))
    paths = []
    for trace in sorted({k[0] for k in curves}):
        keys = [k for k in curves if k[0] == trace]
        places, drifts = sorted({k[1] for k in keys}), sorted({k[2] for k in keys})
        fig, axes = plt.subplots(len(places), len(drifts), figsize=(3.4 * len(drifts), 2.8 * len(places)),
                                 squeeze=False, sharex=True)  # fmt: skip
        for i, place in enumerate(places):
            for j, drift in enumerate(drifts):
                ax = axes[i][j]
                for policy in POLICIES:
                    y = curves.get((trace, place, drift), {}).get(policy)
                    if y is not None:
                        ax.plot(np.arange(1, len(y) + 1), y * 1e3, marker="o", label=policy)
                        ax.set_xticks(np.arange(1, len(y) + 1))
                        ax.set_xticks(np.arange(1, len(y) + 1))
                ax.set_title(f"{place}, drift {drift:g}", fontsize=9)
                if i == len(places) - 1:
                    ax.set_xlabel("served window")
                if j == 0:
                    ax.set_ylabel("MoE-layer time (ms)")
        axes[0][0].legend(fontsize=8)
        fig.suptitle(f"{trace}: modelled MoE-layer time per window and policy (lower is better)", fontsize=10)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", trace)
        paths.append(save_png(fig, Path(out) / f"layer_time_per_window_{name}.png"))
    return paths
