"""Checks every placement runs before it does any work; the messages give the numbers."""

from __future__ import annotations

import numpy as np

from common.errors import InputError


def check_counts(num_layers: int, num_experts: int, num_gpus: int, equal: bool = False) -> int:
    """Refuse shapes that cannot be placed without replicas; return ``E // G`` (experts per GPU).

    Args:
        equal: also require ``E`` to be a multiple of ``G`` (same expert count on every GPU).
    """
    if num_layers < 1:
        raise InputError(f"placement: need at least one layer, got {num_layers}")
    if num_gpus < 1:
        raise InputError(f"placement: need at least one GPU, got {num_gpus}")
    if num_experts < num_gpus:
        raise InputError(
            f"placement: {num_gpus} GPUs but only {num_experts} experts per layer; without replicas every GPU "
            f"needs at least one expert (use at most {num_experts} GPUs, or a placement with replicas)"
        )
    if equal and num_experts % num_gpus:
        raise InputError(
            f"placement: {num_experts} experts per layer do not split evenly over {num_gpus} GPUs "
            f"({num_experts} % {num_gpus} = {num_experts % num_gpus}); use a GPU count that divides the experts"
        )
    return num_experts // num_gpus


def check_load(load: np.ndarray, name: str = "P") -> np.ndarray:
    """Validate a load matrix ``P [L, E]`` (finite, non-negative); return it as float64."""
    arr = np.asarray(load)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise InputError(f"placement: '{name}' must be a [layers, experts] array, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or not np.all(np.isfinite(arr)) or (arr < 0).any():
        raise InputError(f"placement: '{name}' must hold finite non-negative token counts")
    return arr.astype(np.float64)


def check_pairs(pairs: np.ndarray, num_layers: int, num_experts: int, name: str = "R") -> np.ndarray:
    """Validate cross-layer pair counts ``R [L-1, E, E]``; return them as float64."""
    arr = np.asarray(pairs)
    want = (max(num_layers - 1, 0), num_experts, num_experts)
    if arr.shape != want:
        raise InputError(
            f"placement: '{name}' must have shape [layers-1, experts, experts] = {want}, got {arr.shape}"
        )
    if arr.size and (not np.all(np.isfinite(arr)) or (arr < 0).any()):
        raise InputError(f"placement: '{name}' must hold finite non-negative counts")
    return arr.astype(np.float64)


def check_bandwidth(bandwidth: np.ndarray, num_gpus: int | None = None) -> np.ndarray:
    """Validate a bandwidth matrix ``B [G, G]`` in GB/s (positive off the diagonal); return float64."""
    arr = np.asarray(bandwidth, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise InputError(
            f"placement: 'bandwidth' must be a square [G, G] matrix (GB/s), got shape {arr.shape}"
        )
    if num_gpus is not None and arr.shape[0] != num_gpus:
        raise InputError(
            f"placement: 'bandwidth' is {arr.shape[0]}x{arr.shape[0]} but there are {num_gpus} GPUs"
        )
    off = ~np.eye(arr.shape[0], dtype=bool)
    if not np.all(np.isfinite(arr)) or (arr[off] <= 0).any():
        raise InputError("placement: 'bandwidth' must be finite and positive between different GPUs (GB/s)")
    return arr


def check_nodes(num_gpus: int, gpus_per_node: int) -> int:
    """Return the node count; ``gpus_per_node`` must divide the GPU count."""
    if (
        isinstance(gpus_per_node, bool)
        or not isinstance(gpus_per_node, int | np.integer)
        or gpus_per_node < 1
    ):
        raise InputError(f"placement: 'gpus_per_node' must be a positive integer, got {gpus_per_node!r}")
    if num_gpus % gpus_per_node:
        raise InputError(
            f"placement: {num_gpus} GPUs are not a whole number of nodes of {gpus_per_node} GPUs"
        )
    return num_gpus // int(gpus_per_node)
