"""One call for every placement algorithm: ``make_placement(name, P, R, bandwidth, gpus_per_node, seed, **opts)``.

Names and their options (everything else is a ``ConfigError`` naming the option):

- ``contiguous``, ``round_robin``: no options. Expert e on GPU ``e // (E/G)`` / ``e % G``.
- ``random``: no options; uses ``seed``.
- ``greedy``: no options. Heaviest expert to the least loaded GPU, ``E/G`` experts per GPU.
- ``eplb``: ``num_redundant`` (extra slots per layer, default 0), ``num_groups`` (default: one per node),
  ``hierarchical`` (default true; false = global).
- ``exflow``: ``method`` (``auto``/``ilp``/``sweeps``), ``max_vars``, and the solver options ``solver``,
  ``gap``, ``time_limit_s``, ``threads``, ``msg``.
- ``moetuner``: every field of ``MoETunerOptions``: ``solver``, ``gap``, ``time_limit_s``, ``threads``,
  ``msg``, ``stage1_abs_tol``, ``stage1_time_share``, ``equal_size``, ``stage2`` (``ilp``/``decomposed``/
  ``greedy``/``random``), ``max_joint_vars``, ``replicas``.

A runner calls ``make_placement(cfg.placement.name, ..., **{other keys of cfg.placement})``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from common.errors import ConfigError
from moe.placement import milp
from moe.placement.base import Placement
from moe.placement.checks import check_bandwidth, check_load
from moe.placement.eplb import eplb
from moe.placement.exflow import exflow
from moe.placement.greedy import greedy
from moe.placement.moetuner import MoETunerOptions, moetuner
from moe.placement.simple import contiguous, random_placement, round_robin

Maker = Callable[..., Placement]
_SOLVER_KEYS = ("solver", "gap", "time_limit_s", "threads", "msg")


def _shape(p: np.ndarray, bandwidth: np.ndarray) -> tuple[int, int, int]:
    arr = check_load(p)
    return arr.shape[0], arr.shape[1], check_bandwidth(bandwidth).shape[0]


def _contiguous(p, r, b, gpn, seed, **o) -> Placement:
    return contiguous(*_shape(p, b))


def _round_robin(p, r, b, gpn, seed, **o) -> Placement:
    return round_robin(*_shape(p, b))


def _random(p, r, b, gpn, seed, **o) -> Placement:
    return random_placement(*_shape(p, b), seed=seed)


def _greedy(p, r, b, gpn, seed, **o) -> Placement:
    return greedy(p, check_bandwidth(b).shape[0])


def _eplb(p, r, b, gpn, seed, **o) -> Placement:
    return eplb(p, check_bandwidth(b).shape[0], gpn, **o)


def _exflow(p, r, b, gpn, seed, **o) -> Placement:
    solver = {k: o.pop(k) for k in _SOLVER_KEYS if k in o}
    return exflow(r, check_bandwidth(b).shape[0], gpn, options=milp.SolverOptions(**solver), **o)


def _moetuner(p, r, b, gpn, seed, **o) -> Placement:
    return moetuner(p, r, b, MoETunerOptions(**o), seed=seed)


PLACEMENTS: dict[str, Maker] = {
    "contiguous": _contiguous,
    "round_robin": _round_robin,
    "random": _random,
    "greedy": _greedy,
    "eplb": _eplb,
    "exflow": _exflow,
    "moetuner": _moetuner,
}

OPTIONS: dict[str, tuple[str, ...]] = {
    "contiguous": (),
    "round_robin": (),
    "random": (),
    "greedy": (),
    "eplb": ("num_redundant", "num_groups", "hierarchical"),
    "exflow": ("method", "max_vars", *_SOLVER_KEYS),
    "moetuner": tuple(MoETunerOptions.names()),
}


def make_placement(
    name: str,
    P: np.ndarray,  # noqa: N803 - the papers' names
    R: np.ndarray,  # noqa: N803
    bandwidth: np.ndarray,
    gpus_per_node: int,
    seed: int = 0,
    **options: Any,
) -> Placement:
    """Run placement ``name`` on ``P [L, E]``, ``R [L-1, E, E]``, ``bandwidth [G, G]`` (GB/s).

    Raises:
        ConfigError: unknown name or option (named), or an option of the wrong form.
        InputError: arrays that cannot be placed (the message gives the numbers).
    """
    if name not in PLACEMENTS:
        raise ConfigError("placement.name", f"expected one of {sorted(PLACEMENTS)}, got {name!r}")
    opts: dict[str, Any] = dict(options)
    allowed = OPTIONS[name]
    for key in opts:
        if key not in allowed:
            raise ConfigError(
                f"placement.{key}", f"unknown option for {name!r}; allowed: {list(allowed) or 'none'}"
            )
    return PLACEMENTS[name](P, R, bandwidth, gpus_per_node, seed, **_plain(opts))


def _plain(opts: Mapping[str, Any]) -> dict[str, Any]:
    """Hydra gives ints for floats written without a dot; keep the types the dataclasses check."""
    out = dict(opts)
    for key in ("gap", "time_limit_s", "stage1_abs_tol", "stage1_time_share"):
        if key in out and isinstance(out[key], int) and not isinstance(out[key], bool):
            out[key] = float(out[key])
    return out
