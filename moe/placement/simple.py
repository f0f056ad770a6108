"""Placements that ignore the routing statistics: contiguous (Megatron's default), round-robin, random."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.config import schema
from moe.placement.base import Placement
from moe.placement.checks import check_counts
from moe.placement.placer import PlacementProblem, Placer


def contiguous(num_layers: int, num_experts: int, num_gpus: int) -> Placement:
    """Expert ``e`` of every layer on GPU ``e // (E / G)`` (experts 0..E/G-1 on GPU 0, ...).

    Args:
        num_layers: L. num_experts: E. num_gpus: G; ``E`` must be a multiple of ``G``.

    Returns:
        A placement without replicas, ``E / G`` experts on every GPU in every layer.
    """
    per = check_counts(num_layers, num_experts, num_gpus, equal=True)
    gpu_of = np.repeat(np.arange(num_gpus), per)[None, :].repeat(num_layers, axis=0)
    return Placement.from_expert_to_gpu(gpu_of, num_gpus, name="contiguous")


def round_robin(num_layers: int, num_experts: int, num_gpus: int) -> Placement:
    """Expert ``e`` of every layer on GPU ``e % G``; ``E`` must be a multiple of ``G``."""
    check_counts(num_layers, num_experts, num_gpus, equal=True)
    gpu_of = (np.arange(num_experts) % num_gpus)[None, :].repeat(num_layers, axis=0)
    return Placement.from_expert_to_gpu(gpu_of, num_gpus, name="round_robin")


def random_placement(num_layers: int, num_experts: int, num_gpus: int, seed: int) -> Placement:
    """An independent uniformly random balanced placement per layer (``E / G`` experts per GPU).

    Args:
        seed: the same seed gives the same placement (layer ``l`` draws from ``default_rng([seed, l])``).
    """
    per = check_counts(num_layers, num_experts, num_gpus, equal=True)
    slots = np.repeat(np.arange(num_gpus), per)
    gpu_of = np.stack([np.random.default_rng([seed, li]).permutation(slots) for li in range(num_layers)])
    return Placement.from_expert_to_gpu(gpu_of, num_gpus, name="random", info={"seed": int(seed)})


@schema("placement", "contiguous")
@dataclass(frozen=True)
class Contiguous(Placer):
    """Megatron's default (the paper's baseline): expert ``e`` on GPU ``e // (E / G)``."""

    name = "contiguous"

    def place(self, problem: PlacementProblem) -> Placement:
        return contiguous(*problem.shape)


@schema("placement", "round_robin")
@dataclass(frozen=True)
class RoundRobin(Placer):
    """Expert ``e`` on GPU ``e % G``."""

    name = "round_robin"

    def place(self, problem: PlacementProblem) -> Placement:
        return round_robin(*problem.shape)


@schema("placement", "random")
@dataclass(frozen=True)
class RandomPlacement(Placer):
    """A uniformly random balanced placement per layer, drawn from the run's seed."""

    name = "random"

    def place(self, problem: PlacementProblem) -> Placement:
        return random_placement(*problem.shape, seed=problem.seed)
