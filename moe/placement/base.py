"""The one placement type that every algorithm returns, with its checks and its exchange formats.

A placement says, for every MoE layer, which expert ids each GPU (EP rank) holds. An expert held by several
GPUs is replicated; its tokens are split between its replicas (see ``expert_share``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.atomic import atomic_write_json
from common.errors import InputError

FORMAT = "moe.placement/1"


Layer = list[list[int]]  # one layer's assignment: ``layer[g]`` = expert ids on GPU g


def swap_experts(layer: Layer, g1: int, x: int, g2: int, y: int) -> Layer:
    """A copy of ``layer`` in which expert ``x`` (on GPU ``g1``) and expert ``y`` (on GPU ``g2``) trade GPUs,
    each keeping the other's position in its GPU's list."""
    out = [list(gpu) for gpu in layer]
    out[g1][out[g1].index(x)] = y
    out[g2][out[g2].index(y)] = x
    return out


@dataclass
class Placement:
    """Experts held by each GPU in each layer.

    Attributes:
        assignment: ``assignment[l][g]`` is the sorted list of expert ids GPU ``g`` holds in layer ``l``
            (``L`` layers, ``G`` GPUs). Every expert appears at least once per layer; more than once means
            replicas (on different GPUs).
        num_experts: E, logical experts per layer.
        name: the algorithm that made it (``contiguous``, ``moetuner``, ...).
        info: what the algorithm reports (for solvers: status, objective, bound, gap, solve_time_s, size,
            notes such as a relaxed memory constraint or a greedy fallback).
    """

    assignment: list[list[list[int]]]
    num_experts: int
    name: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.assignment = [[sorted(int(e) for e in gpu) for gpu in layer] for layer in self.assignment]
        self.validate()

    # ------------------------------------------------------------------ shape
    @property
    def num_layers(self) -> int:
        return len(self.assignment)

    @property
    def num_gpus(self) -> int:
        return len(self.assignment[0]) if self.assignment else 0

    @property
    def has_replicas(self) -> bool:
        return bool((self.replica_counts() > 1).any())

    def validate(self) -> None:
        """Raise ``InputError`` naming the layer/GPU/expert when the placement is not well formed."""
        if not self.assignment:
            raise InputError("placement: 'assignment' has no layers")
        g = len(self.assignment[0])
        if g < 1:
            raise InputError("placement: layer 0 has no GPUs")
        e = self.num_experts
        for li, layer in enumerate(self.assignment):
            if len(layer) != g:
                raise InputError(f"placement: layer {li} has {len(layer)} GPUs, layer 0 has {g}")
            seen = np.zeros(e, dtype=np.int64)
            for gi, gpu in enumerate(layer):
                if len(set(gpu)) != len(gpu):
                    raise InputError(f"placement: layer {li}, GPU {gi} holds an expert twice: {gpu}")
                for x in gpu:
                    if not 0 <= x < e:
                        raise InputError(f"placement: layer {li}, GPU {gi}: expert id {x} not in 0..{e - 1}")
                    seen[x] += 1
            missing = np.flatnonzero(seen == 0)
            if missing.size:
                raise InputError(f"placement: layer {li} places no copy of experts {missing.tolist()}")

    # ------------------------------------------------------------------ views
    def replica_counts(self) -> np.ndarray:
        """int64 ``[L, E]``: GPUs holding each expert."""
        out = np.zeros((self.num_layers, self.num_experts), dtype=np.int64)
        for li, layer in enumerate(self.assignment):
            for gpu in layer:
                out[li, gpu] += 1
        return out

    def expert_share(self) -> np.ndarray:
        """float64 ``[L, G, E]``: fraction of expert e's tokens that GPU g processes (replicas split evenly).

        Every ``[l, :, e]`` column sums to 1.
        """
        held = np.zeros((self.num_layers, self.num_gpus, self.num_experts))
        for li, layer in enumerate(self.assignment):
            for gi, gpu in enumerate(layer):
                held[li, gi, gpu] = 1.0
        return held / held.sum(axis=1, keepdims=True)

    def expert_to_gpu(self) -> np.ndarray:
        """int64 ``[L, E]``: the GPU of each expert; only for placements without replicas."""
        if self.has_replicas:
            raise ValueError("expert_to_gpu: this placement has replicas; use expert_share()")
        out = np.empty((self.num_layers, self.num_experts), dtype=np.int64)
        for li, layer in enumerate(self.assignment):
            for gi, gpu in enumerate(layer):
                out[li, gpu] = gi
        return out

    def experts_per_gpu(self) -> np.ndarray:
        """int64 ``[L, G]``: experts (slots used) on each GPU in each layer."""
        return np.array([[len(gpu) for gpu in layer] for layer in self.assignment], dtype=np.int64)

    @classmethod
    def from_expert_to_gpu(
        cls, gpu_of: np.ndarray, num_gpus: int, name: str = "", info: dict[str, Any] | None = None
    ) -> Placement:
        """Build from an int array ``[L, E]`` of GPU ids (no replicas)."""
        gpu_of = np.asarray(gpu_of)
        if gpu_of.ndim != 2:
            raise InputError(f"expert_to_gpu: expected [layers, experts], got shape {gpu_of.shape}")
        if gpu_of.size and (gpu_of.min() < 0 or gpu_of.max() >= num_gpus):
            raise InputError(f"expert_to_gpu: GPU ids must be in 0..{num_gpus - 1}")
        assignment = [[np.flatnonzero(row == g).tolist() for g in range(num_gpus)] for row in gpu_of]
        return cls(assignment, num_experts=gpu_of.shape[1], name=name, info=dict(info or {}))

    # ------------------------------------------------------------------ exchange
    def physical_to_logical(self) -> np.ndarray:
        """int64 ``[L, G * S]``, the serving engines' map: slot s lives on GPU ``s // S``.

        ``S`` is the largest number of experts any GPU holds in any layer; unused slots are ``-1``.
        """
        s = int(self.experts_per_gpu().max())
        out = np.full((self.num_layers, self.num_gpus * s), -1, dtype=np.int64)
        for li, layer in enumerate(self.assignment):
            for gi, gpu in enumerate(layer):
                out[li, gi * s : gi * s + len(gpu)] = gpu
        return out

    @classmethod
    def from_physical_to_logical(
        cls, p2l: np.ndarray, num_gpus: int, num_experts: int, name: str = ""
    ) -> Placement:
        """Inverse of ``physical_to_logical`` (``-1`` slots are empty)."""
        p2l = np.asarray(p2l)
        if p2l.ndim != 2 or p2l.shape[1] % num_gpus:
            raise InputError(
                f"physical_to_logical_map: expected [layers, slots] with slots divisible by {num_gpus} GPUs, "
                f"got shape {p2l.shape}"
            )
        s = p2l.shape[1] // num_gpus
        assignment = [
            [[int(x) for x in row[g * s : (g + 1) * s] if x >= 0] for g in range(num_gpus)] for row in p2l
        ]
        return cls(assignment, num_experts=num_experts, name=name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "name": self.name,
            "num_experts": self.num_experts,
            "num_gpus": self.num_gpus,
            "num_layers": self.num_layers,
            "assignment": self.assignment,
            "physical_to_logical_map": self.physical_to_logical().tolist(),
            "info": self.info,
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the placement as JSON, atomically."""
        return atomic_write_json(path, self.to_dict(), indent=None)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Placement:
        """Read a placement JSON written by ``save``; errors name the file and the field."""
        p = Path(path)
        try:
            raw = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"{p}: cannot read placement JSON ({exc})") from exc
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise InputError(f"{p}: field 'format' must be {FORMAT!r}")
        for key in ("assignment", "num_experts"):
            if key not in raw:
                raise InputError(f"{p}: missing field '{key}'")
        return cls(
            raw["assignment"],
            num_experts=int(raw["num_experts"]),
            name=raw.get("name", ""),
            info=raw.get("info", {}),
        )
