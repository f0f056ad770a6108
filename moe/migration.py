"""What re-placing experts costs: the bytes of every moved expert copy's weights over the topology's links.

Rules (docs/placement.md, "Placement over time"):

- A layer's moved copies are the (GPU, expert) pairs the new placement holds and the old one does not: each
  is one expert's weights written into a slot of that GPU. Copies both placements hold stay; a copy the new
  placement drops costs nothing (its slot is overwritten).
- One copy's bytes are the routed expert's weights: ``3 x hidden x ffn`` parameters (SwiGLU: gate, up and
  down projections) x ``dtype_bytes`` = ``expert_flops_per_token / 2 x dtype_bytes``, or ``expert_bytes``.
- A moved copy is read from the old holder of that expert with the fastest path to its new GPU (ties: the
  lowest GPU id). Every layer's copies move in one phase (weights are staged in buffers before any slot is
  overwritten, as serving engines' rearrangements do); the phase takes as long as its slowest link, sender or
  receiver under the cost model's ``Fabric`` rules (``moe.cost_model``), with expert bytes per transfer.
- Amortised over ``steps`` serving steps, the migration adds ``migration_s / steps`` to every step.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from common.errors import ConfigError, InputError
from moe.cost_model import Fabric
from moe.placement.base import Placement
from moe.topology import Topology


def expert_weight_bytes(topology: Topology, override: float | None = None) -> float:
    """Bytes of one routed expert's weights: ``override``, else ``expert_flops_per_token / 2 x dtype_bytes``.

    Raises:
        ConfigError: (``replan.expert_bytes``) when the topology's compute is measured time only (no FLOPs).
    """
    if override is not None:
        return float(override)
    flops = topology.compute.expert_flops_per_token
    if flops is None:
        raise ConfigError(
            "replan.expert_bytes", "the topology gives no expert FLOPs to derive weights from; set the bytes"
        )
    return float(flops) / 2.0 * float(topology.dtype_bytes)


def layer_moves(old: list[list[int]], new: list[list[int]]) -> list[tuple[int, int]]:
    """``(gpu, expert)`` copies that layer assignment ``new`` holds and ``old`` does not (sorted)."""
    if len(old) != len(new):
        raise InputError(f"migration: layers have {len(old)} and {len(new)} GPUs")
    return [(g, e) for g, gpu in enumerate(new) for e in sorted(set(gpu) - set(old[g]))]


def moved_copies(old: Placement, new: Placement) -> np.ndarray:
    """int64 ``[L]``: expert copies moved in each layer from ``old`` to ``new``."""
    _check_pair(old, new)
    return np.array([len(layer_moves(a, b)) for a, b in zip(old.assignment, new.assignment, strict=True)])


@dataclass(frozen=True)
class Migration:
    """One re-placement's migration.

    Attributes:
        copies: int64 ``[L]`` expert copies moved per layer.
        traffic: int64 ``[G, G]`` copies read from GPU a and written on GPU b, summed over layers.
        expert_bytes: bytes of one copy.
        seconds: the phase's time (slowest link, sender or receiver), 0 without moves.
    """

    copies: np.ndarray
    traffic: np.ndarray
    expert_bytes: float
    seconds: float

    @property
    def num_copies(self) -> int:
        return int(self.copies.sum())

    @property
    def bytes(self) -> float:
        return float(self.num_copies * self.expert_bytes)

    def amortised_s(self, steps: int) -> float:
        """Seconds added to each of ``steps`` serving steps."""
        return self.seconds / float(steps)


def migration(old: Placement, new: Placement, topology: Topology, expert_bytes: float) -> Migration:
    """The migration from ``old`` to ``new`` on ``topology`` (module docstring rules)."""
    _check_pair(old, new)
    g = old.num_gpus
    if g != topology.num_gpus:
        raise InputError(f"migration: placements have {g} GPUs, topology {topology.name} {topology.num_gpus}")
    inv = topology.inverse_bandwidth_s_per_byte()
    traffic = np.zeros((g, g), dtype=np.int64)
    copies = np.zeros(old.num_layers, dtype=np.int64)
    for li, (a, b) in enumerate(zip(old.assignment, new.assignment, strict=True)):
        holders: dict[int, list[int]] = {}
        for gi, gpu in enumerate(a):
            for e in gpu:
                holders.setdefault(e, []).append(gi)
        for dst, e in layer_moves(a, b):
            src = min(holders[e], key=lambda s, d=dst: (inv[s, d], s))
            traffic[src, dst] += 1
            copies[li] += 1
    fabric = dataclasses.replace(Fabric.of(topology), bytes_per_token=float(expert_bytes))
    seconds = float(fabric.transfer_times(traffic[None].astype(np.float64)).max()) if traffic.any() else 0.0
    return Migration(copies=copies, traffic=traffic, expert_bytes=float(expert_bytes), seconds=seconds)


def _check_pair(old: Placement, new: Placement) -> None:
    if (old.num_layers, old.num_experts, old.num_gpus) != (new.num_layers, new.num_experts, new.num_gpus):
        raise InputError(
            f"migration: placements differ in shape: {old.num_layers} x {old.num_experts} on {old.num_gpus} "
            f"vs {new.num_layers} x {new.num_experts} on {new.num_gpus}"
        )
