"""The placement a serve run uses: a ``placement.json`` from ``runners.moe``, or one made from the config.

This module is the engine's one call into the placement algorithms (``build(cfg.placement).place(...)``).
``check_placement`` refuses a placement that does not fit the model and the world with a message naming what
differs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import ConfigError, InputError
from moe.cost_model import EvalOptions
from moe.engine.spec import MoEModelSpec
from moe.placement.base import Placement
from moe.placement.placer import build_placer
from moe.placement.profiled import ProfiledProblem
from moe.topology import Topology
from moe.trace import Trace


def make_placement(
    placement_cfg: Any,
    profile: Trace,
    layers: int,
    topology: Topology,
    seed: int,
    replica_choice: str = "even",
) -> Placement:
    """The ``placement`` config node built as a ``Placer`` and run on the first ``layers`` layers of the
    profiling trace (within the placement's own ``time_limit_s``). Named by its table label.

    Placements that search the cost model (``moetuner_plus``) see the engine's replay rules: tokens return
    home after every layer, replicas chosen by ``replica_choice``.
    """
    placer = build_placer(placement_cfg)
    options = EvalOptions(token_movement="home", replica_choice=replica_choice)
    slot_order = profile.slot_order or "unordered"
    problem = ProfiledProblem.from_trace(
        profile.experts[:, :layers], profile.num_experts, topology, options, slot_order, seed
    )
    placed = placer.place(problem)
    placed.name = placer.table_label
    return placed


def load_file(path: str) -> Placement:
    """A ``placement.json`` written by ``runners.moe``; errors name the file.

    A ``physical_to_logical_map`` (the serving engines' view) that contradicts ``assignment`` is refused.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError("placement_file", f"placement file not found: {path}")
    placement = Placement.load(p)
    raw = json.loads(p.read_text(encoding="utf-8"))
    if raw.get("physical_to_logical_map") is not None:
        check_map(placement, raw["physical_to_logical_map"], str(p))
    return placement


def check_map(placement: Placement, p2l: Any, where: str) -> None:
    """Raise ``InputError`` when ``p2l [L, G*S]`` does not hold, per layer and rank, the assignment's experts."""
    arr = np.asarray(p2l)
    mapped = Placement.from_physical_to_logical(arr, placement.num_gpus, placement.num_experts)
    if mapped.num_layers != placement.num_layers:
        raise InputError(f"{where}: physical_to_logical_map has {mapped.num_layers} layers, assignment has "
                         f"{placement.num_layers}")  # fmt: skip
    for li, (a, b) in enumerate(zip(placement.assignment, mapped.assignment, strict=True)):
        for g, (x, y) in enumerate(zip(a, b, strict=True)):
            if sorted(x) != sorted(y):
                raise InputError(
                    f"{where}: physical_to_logical_map contradicts assignment in layer {li}, rank {g}: map "
                    f"holds experts {sorted(y)}, assignment {sorted(x)}"
                )


def serve_placement(
    placement_cfg: Any,
    placement_file: str | None,
    profile: Trace,
    layers: int,
    topology: Topology,
    seed: int,
    replica_choice: str = "even",
) -> Placement:
    """The placement of the first ``layers`` layers: from ``placement_file`` if set, else from the config."""
    if placement_file:
        return truncate(load_file(placement_file), layers)
    return make_placement(placement_cfg, profile, layers, topology, seed, replica_choice)


def truncate(placement: Placement, layers: int) -> Placement:
    """The first ``layers`` layers of ``placement``."""
    if placement.num_layers < layers:
        raise InputError(
            f"placement '{placement.name}' has {placement.num_layers} layers, the model needs {layers}"
        )
    if placement.num_layers == layers:
        return placement
    return Placement(
        placement.assignment[:layers], placement.num_experts, placement.name, dict(placement.info)
    )


def check_placement(placement: Placement, spec: MoEModelSpec, world_size: int, require_all: bool) -> None:
    """Raise ``InputError`` when ``placement`` cannot serve ``spec`` on ``world_size`` ranks."""
    name = placement.name or "placement"
    if placement.num_experts != spec.num_experts:
        raise InputError(
            f"placement '{name}' has {placement.num_experts} experts per layer, model '{spec.name}' has "
            f"{spec.num_experts}"
        )
    if placement.num_gpus != world_size:
        raise InputError(
            f"placement '{name}' is for {placement.num_gpus} ranks, this run has world size {world_size}"
        )
    if placement.num_layers < spec.num_layers:
        raise InputError(
            f"placement '{name}' has {placement.num_layers} layers, model '{spec.name}' has {spec.num_layers}"
        )
    if require_all:
        for li in range(spec.num_layers):
            for g, experts in enumerate(placement.assignment[li]):
                if not experts:
                    raise InputError(
                        f"placement '{name}': rank {g} holds no expert in layer {li} "
                        "(set engine.require_experts_on_every_rank=false to allow it)"
                    )
