"""What every placement algorithm is: a ``Placer`` (its options, a dataclass) called on a ``PlacementProblem``.

A new placement is one module with a ``@schema("placement", "<name>")`` dataclass that subclasses ``Placer``
and implements ``place``, plus ``conf/placement/<name>.yaml`` (see ``common.config``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from common.config import build
from common.errors import ConfigError
from moe.placement.base import Placement
from moe.placement.checks import check_bandwidth, check_load, check_pairs


@dataclass(frozen=True)
class PlacementProblem:
    """The inputs of a placement, all measured on the profiling part of a trace.

    Attributes:
        load: ``P [L, E]`` float, token copies per expert per layer.
        pairs: ``R [L-1, E, E]`` float, tokens that chose ``e1`` in layer ``l`` and ``e2`` in layer ``l+1``
            (all ``k x k`` slot pairs of a token; see ``moe.stats.cross_layer_counts``).
        bandwidth: ``B [G, G]`` float, GB/s between EP ranks.
        gpus_per_node: EP ranks per node (``G`` when there is one node).
        seed: for randomised placements and tie-breaks.
    """

    load: np.ndarray
    pairs: np.ndarray
    bandwidth: np.ndarray
    gpus_per_node: int
    seed: int = 0

    def __post_init__(self) -> None:
        p = check_load(self.load)
        check_pairs(self.pairs, p.shape[0], p.shape[1])
        check_bandwidth(self.bandwidth)

    @property
    def num_layers(self) -> int:
        return int(np.shape(self.load)[0])

    @property
    def num_experts(self) -> int:
        return int(np.shape(self.load)[1])

    @property
    def num_gpus(self) -> int:
        return int(np.shape(self.bandwidth)[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(L, E, G)``."""
        return self.num_layers, self.num_experts, self.num_gpus


@dataclass(frozen=True)
class Placer:
    """Base of every placement algorithm's options.

    Attributes:
        label: the name in tables (e.g. ``moetuner+replicas``); empty = ``name``.
        time_limit_s: the placement's wall-clock budget, seconds (> 0), the one time limit a placement has
            (``moetuner_plus`` gives it to its candidates and again to its search).
            Searching placements (``moetuner``, ``exflow``, ``moetuner_plus``) make a ``Deadline`` of it when
            ``place`` starts and pass it down to every phase and solver; the others finish far within it.
            Each placement's YAML may set its own default; experiment presets override it
            (``placement.time_limit_s: 10``).
    """

    name: ClassVar[str] = ""
    label: str = ""
    time_limit_s: float = 60.0

    def __post_init__(self) -> None:
        t = self.time_limit_s
        if isinstance(t, bool) or not isinstance(t, int | float) or not float(t) > 0:
            raise ConfigError("time_limit_s", f"expected a positive number of seconds, got {t!r}")

    @property
    def table_label(self) -> str:
        return self.label or self.name

    def place(self, problem: PlacementProblem) -> Placement:
        """The placement of ``problem``'s experts."""
        raise NotImplementedError(f"{type(self).__name__}.place")


def build_placer(node: Any) -> Placer:
    """The ``placement`` config node built as a ``Placer`` (``common.config.build``).

    Raises:
        ConfigError: not a placement, or a bad option (named ``placement.<field>``).
    """
    placer = build(node, "placement")
    if not isinstance(placer, Placer):
        raise ConfigError("placement", f"expected a placement (a Placer), got {type(placer).__name__}")
    return placer
