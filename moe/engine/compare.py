"""The engine against the cost model: the same choices and placement replayed by ``moe.cost_model``.

The engine combines to the token's home rank, so the cost model runs with ``token_movement=home``, the
engine's batch size, ``first_layer_start=uniform`` and deduplicated dispatch; its dispatch matrix must equal the
rows the engine sent (``dispatch_matches``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from moe.cost_model import CostReport, EvalOptions, evaluate_placement
from moe.placement.base import Placement
from moe.topology import Topology, topology_from_config


def engine_topology(
    topology_cfg: Mapping[str, Any],
    world_size: int,
    num_nodes: int,
    hidden_size: int,
    dtype_bytes: int,
    expert_flops_per_token: int,
) -> Topology:
    """The ``topology`` preset resized to this run: ``world_size`` EP ranks (one GPU each) on ``num_nodes``
    nodes, the model's hidden size, dtype and expert FLOPs (a measured ``time_per_token_s`` still wins)."""
    cfg = dict(topology_cfg)
    compute = dict(cfg.get("compute") or {})
    compute["expert_flops_per_token"] = expert_flops_per_token
    cfg.update(
        num_nodes=num_nodes,
        gpus_per_node=world_size // num_nodes,
        ep_ranks=world_size,
        bandwidth_matrix=None,
        hidden_size=hidden_size,
        dtype_bytes=dtype_bytes,
        compute=compute,
    )
    if num_nodes > 1 and cfg.get("inter_node_gbps") is None:
        cfg["inter_node_gbps"] = cfg.get("intra_node_gbps")
    return topology_from_config(cfg)


def model_report(
    ids: np.ndarray, placement: Placement, topology: Topology, batch_tokens: int, replica_choice: str
) -> CostReport:
    """The cost model on the engine's choices ``ids [T, L, k]`` with the engine's rules."""
    opts = EvalOptions(
        batch_tokens=batch_tokens,
        first_layer_start="uniform",
        token_movement="home",
        dedupe_dispatch=True,
        replica_choice=replica_choice,
    )
    return evaluate_placement(ids, placement, topology, opts)


def dispatch_matches(sent: np.ndarray, report: CostReport) -> bool:
    """True when the engine's rows per rank pair ``sent [L, G, G]`` equal the cost model's dispatch matrix."""
    return sent.shape == report.dispatch.shape and bool((sent == report.dispatch).all())


def pearson(a: Sequence[float], b: Sequence[float]) -> float:
    """Correlation of two equal-length series; ``nan`` with fewer than 2 points or a constant series."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.size < 2 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def rank_agreement(measured: Sequence[float], modelled: Sequence[float]) -> float:
    """Share of pairs of placements that the measurement and the model order the same way (1 = same ranking).

    A pair counts as agreeing when both order it the same (or both tie); ``nan`` with fewer than 2 placements.
    """
    x, y = np.asarray(measured, dtype=np.float64), np.asarray(modelled, dtype=np.float64)
    n = x.size
    if n < 2:
        return float("nan")
    i, j = np.triu_indices(n, k=1)
    return float((np.sign(x[i] - x[j]) == np.sign(y[i] - y[j])).mean())


MIN_CORR_POINTS = 8  # a correlation over fewer points is not reported (two layers give +-1 by construction)


def calibration_device(topology_cfg: Mapping[str, Any]) -> str | None:
    """The ``device_name`` of the ``mode=calibrate`` file the topology loads (``compute_file``), if any."""
    path = topology_cfg.get("compute_file")
    if not path:
        return None
    try:
        raw = OmegaConf.to_container(OmegaConf.load(Path(path).expanduser()))
    except Exception:  # noqa: BLE001 - an unreadable file: the topology loader names it
        return None
    cal = raw.get("calibration") if isinstance(raw, dict) else None
    return str(cal.get("device_name")) if isinstance(cal, dict) and cal.get("device_name") else None


def model_metrics(
    report: CostReport, sent: np.ndarray, measured_layer_s: Sequence[float], calibrated_here: bool = False
) -> dict[str, float]:
    """``model_*`` metrics of a run: the cost model's times, the dispatch check, the per-layer correlation.

    ``model_layer_time_corr`` (Pearson, per layer) is reported only when the cost model's compute term was
    fitted on this run's device (``calibrated_here``: ``mode=calibrate`` there, loaded by
    ``topology.compute_file``) and over at least ``MIN_CORR_POINTS`` layers; otherwise it is ``nan``.
    ``model_corr_points`` is the number of points it used (0 when not reported).
    """
    s = report.summary()
    model_layers = report.layer_series()["layer_time_tail_s"]
    points = len(measured_layer_s)
    ok = calibrated_here and points >= MIN_CORR_POINTS
    return {
        "model_layer_time_tail_s": s["layer_time_tail_s"],
        "model_a2a_time_tail_s": s["a2a_time_tail_s"],
        "model_token_time_tail_s": s["token_time_tail_s"],
        "model_balancedness_mean": s["balancedness_mean"],
        "dispatch_matches_cost_model": float(dispatch_matches(sent, report)),
        "model_layer_time_corr": pearson(measured_layer_s, model_layers) if ok else float("nan"),
        "model_corr_points": float(points if ok else 0),
    }
