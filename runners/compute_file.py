"""``topology.compute_file``: a topology's compute term from a file that ``runners.serve mode=calibrate`` wrote.

The file is YAML with a ``compute`` mapping (``time_per_token_s``, the measured seconds per token per expert);
it replaces the topology's ``compute`` (a measured time wins over FLOPs). Set it with
``+topology.compute_file=path/compute.yaml`` on ``runners.moe`` or ``runners.serve``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from common.errors import ConfigError


def apply_compute_file(topology_cfg: Any) -> Any:
    """The topology node with ``compute`` from ``compute_file`` (when set) and without that key; a node that
    is not a mapping is returned as is (``topology_from_config`` names the problem)."""
    if not isinstance(topology_cfg, Mapping):
        return topology_cfg
    cfg = dict(topology_cfg)
    path = cfg.pop("compute_file", None)
    if not path:
        return cfg
    p = Path(str(path)).expanduser()
    if not p.is_file():
        raise ConfigError("topology.compute_file", f"file not found: {path}")
    try:
        raw = OmegaConf.to_container(OmegaConf.load(p), resolve=True)
    except Exception as exc:  # noqa: BLE001 - YAML errors of any kind
        raise ConfigError("topology.compute_file", f"{path}: not readable YAML ({exc})") from exc
    compute = raw.get("compute") if isinstance(raw, dict) else None
    if not isinstance(compute, dict) or not compute.get("time_per_token_s"):
        raise ConfigError(
            "topology.compute_file", f"{path}: expected a 'compute' mapping with time_per_token_s"
        )
    cfg["compute"] = {"time_per_token_s": float(compute["time_per_token_s"])}
    return cfg
