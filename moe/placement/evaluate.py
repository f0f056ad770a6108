"""Quick measures of a placement against profiled statistics, used by the algorithms, tests and benchmark.

The full cost model (dispatch matrices, link and NIC times) lives elsewhere; these are the two quantities the
placement algorithms optimise: GPU load balance, and MoETuner's per-boundary slowest-link traffic.
"""

from __future__ import annotations

import numpy as np

from moe.placement.base import Placement


def gpu_loads(placement: Placement, load: np.ndarray) -> np.ndarray:
    """float64 ``[L, G]``: token copies each GPU processes (replicas split their expert's load evenly)."""
    return np.einsum("lge,le->lg", placement.expert_share(), np.asarray(load, dtype=np.float64))


def balancedness(placement: Placement, load: np.ndarray) -> np.ndarray:
    """float64 ``[L]``: mean GPU load / max GPU load per layer (1.0 is perfect)."""
    g = gpu_loads(placement, load)
    mx = g.max(axis=1)
    return np.where(mx > 0, g.mean(axis=1) / np.where(mx > 0, mx, 1.0), 1.0)


def link_traffic(placement: Placement, pairs: np.ndarray) -> np.ndarray:
    """float64 ``[L-1, G, G]``: pair counts ``R`` carried from GPU a (layer l) to GPU b (layer l+1).

    Replicas split both ends evenly. The diagonal is traffic that stays on its GPU.
    """
    share = placement.expert_share()  # [L, G, E]
    r = np.asarray(pairs, dtype=np.float64)
    return np.einsum("lae,lef,lbf->lab", share[:-1], r, share[1:])


def slowest_link(placement: Placement, pairs: np.ndarray, bandwidth: np.ndarray) -> np.ndarray:
    """float64 ``[L-1]``: MoETuner's per-boundary objective ``max_{a != b} traffic[a, b] / B[a, b]``."""
    t = link_traffic(placement, pairs)
    b = np.asarray(bandwidth, dtype=np.float64)
    off = ~np.eye(b.shape[0], dtype=bool)
    if not off.any():
        return np.zeros(t.shape[0])
    return (t[:, off] / b[off][None, :]).max(axis=1)


def cross_gpu_fraction(placement: Placement, pairs: np.ndarray) -> float:
    """Fraction of consecutive-layer pair counts whose two experts sit on different GPUs (ExFlow's metric)."""
    t = link_traffic(placement, pairs)
    total = t.sum()
    if total <= 0:
        return 0.0
    local = np.trace(t, axis1=1, axis2=2).sum()
    return float(1.0 - local / total)
