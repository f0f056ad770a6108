"""Options of ``mode=replan`` (config group ``replan``, ``conf/replan/default.yaml``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from common.config import build, schema
from common.errors import ConfigError
from moe.replan import POLICIES

TARGET = "moe.replan_options.ReplanOptions"


@schema("replan", "default")
@dataclass(frozen=True)
class ReplanOptions:
    """How placements follow the trace over windows (``moe.replan``).

    Attributes:
        policy: ``static``, ``periodic`` or ``incremental``.
        move_budget: ``incremental``: at most this many expert copies moved per layer per re-placement;
            null = unlimited (= ``periodic``), 0 = ``static``.
        amortize_steps: serving steps one window lasts; a re-placement's ``migration_s`` is spread over them
            (default 3000: vLLM's EPLB ``step_interval`` default).
        expert_bytes: bytes of one expert copy's weights; null = ``expert_flops_per_token / 2 x dtype_bytes``.
        gain_tokens: profile tokens the incremental policy's gain model replays (the first ones).
        relabel: renumber the GPUs of every from-scratch placement (one node-preserving permutation, a
            symmetry of the cluster) to keep the most copies where the previous one has them
            (``moe.relabel``), so that ``periodic`` moves what changed and not an arbitrary numbering.
    """

    policy: str = "incremental"
    move_budget: int | None = 4
    amortize_steps: int = 3000
    expert_bytes: float | None = None
    gain_tokens: int = 8192
    relabel: bool = True

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ConfigError("policy", f"expected one of {list(POLICIES)}, got {self.policy!r}")
        mb = self.move_budget
        if mb is not None and (isinstance(mb, bool) or not isinstance(mb, int) or mb < 0):
            raise ConfigError(
                "move_budget", f"expected an integer >= 0 (copies per layer) or null, got {mb!r}"
            )
        for key in ("amortize_steps", "gain_tokens"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(key, f"expected an integer >= 1, got {v!r}")
        if not isinstance(self.relabel, bool):
            raise ConfigError("relabel", f"expected true or false, got {self.relabel!r}")
        eb = self.expert_bytes
        if eb is not None and (isinstance(eb, bool) or not isinstance(eb, int | float) or eb <= 0):
            raise ConfigError("expert_bytes", f"expected a positive number of bytes or null, got {eb!r}")


def replan_options(cfg: Mapping[str, Any] | None) -> ReplanOptions:
    """``ReplanOptions`` from a ``replan`` node (``None``: defaults), built by ``common.config.build``;
    errors name ``replan.<key>``."""
    return ReplanOptions() if cfg is None else build(dict(cfg) | {"_target_": TARGET}, "replan")
