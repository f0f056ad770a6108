"""The one console line a finished job prints: what ran, its headline metric, its time, the sweep's ETA.

In a multirun the line starts with ``[k/N]`` and ends with an estimate of the time left. ``N`` comes from the
sweep's own ``multirun.yaml`` (its sweep overrides and ``hydra.sweeper.params``), ``k`` from Hydra's job
number, the elapsed time from that file's age: the same for any launcher.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob, Override
from omegaconf import OmegaConf

from common.records import RunRecord

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"

# The metric a job line shows, first one present wins.
HEADLINE = (
    "speedup_vs_contiguous",
    "speedup_vs_static",
    "tokens_per_s",
    "acc_best",
    "acc_local_mean",
    "imbalance_max_over_mean",
    "calib_time_per_token_s",
    "model_rank_agreement",
)


def _sweep_length(override: Override, conf_dir: Path) -> int:
    """Values of one sweep override; ``glob(...)`` counts the matching options of its group in ``conf_dir``."""
    value = override.value()
    if isinstance(value, Glob):
        options = sorted(p.stem for p in (conf_dir / override.key_or_group).glob("*.yaml"))
        return len(value.filter(options))
    return len(list(override.sweep_iterator()))


def sweep_size(multirun_yaml: Path, conf_dir: Path = CONF_DIR) -> int | None:
    """Jobs in the sweep that ``multirun.yaml`` describes (the product of its sweep lists); ``None`` if
    it cannot be read."""
    try:
        cfg = OmegaConf.load(multirun_yaml)
        task = list(cfg.hydra.overrides.task)
        node = cfg.hydra.sweeper.get("params")
        params = OmegaConf.to_container(node, resolve=False) if node is not None else {}
    except Exception:  # an unreadable file only costs the progress estimate
        return None
    given = {o.split("=", 1)[0].lstrip("+~") for o in task if "=" in o}
    task += [f"{k}={v}" for k, v in params.items() if k not in given]
    try:
        parsed = OverridesParser.create().parse_overrides(task)
        return math.prod(_sweep_length(o, conf_dir) for o in parsed if o.is_sweep_override())
    except Exception:  # an unreadable sweep only costs the progress estimate
        return None


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def headline(metrics: Mapping[str, Any]) -> str:
    for name in HEADLINE:
        value = metrics.get(name)
        if isinstance(value, int | float):
            return f"{name}={value:.4g}"
    return ""


def job_line(
    record: RunRecord, name: str, run_dir: Path, sweep_dir: Path | None = None, job_num: int = 0
) -> str:
    """``[k/N] name  headline  12.3 s  (ETA 4m10s)`` for job ``job_num`` (Hydra's, from 0) of the multirun in
    ``sweep_dir``; ``done: name  headline  12.3 s  -> record`` for a single run (``sweep_dir`` None)."""
    body = "  ".join(x for x in (name, headline(record.metrics), f"{record.duration_s:.1f} s") if x)
    if sweep_dir is None:
        return f"done: {body}  -> {run_dir / 'result.json'}"
    total = sweep_size(sweep_dir / "multirun.yaml")
    done = job_num + 1  # the k-th job of the sweep, whether it ran or was resumed
    if not total:
        return f"[{done}] {body}"
    line = f"[{done}/{total}] {body}"
    started = (sweep_dir / "multirun.yaml").stat().st_mtime
    if 0 < done < total:
        left = (time.time() - started) / done * (total - done)
        line += f"  (ETA {_duration(left)})"
    return line
