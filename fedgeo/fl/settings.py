"""The ``fl`` block of ``conf/fed.yaml``: rounds, federation size, local SGD and the simulation backend."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from common.config import schema
from common.errors import ConfigError
from fedgeo.fl.faults import Fault, parse_faults

BACKENDS = ("inprocess", "ray")
ON_DEGRADED = ("degrade", "fail")


@schema("fl", "default")
@dataclass(frozen=True)
class FLSettings:
    """Federated training settings.

    Attributes:
        rounds: communication rounds (after the GGEUR exchange round, when there is one).
        clients: the federation's size (the Dirichlet partitions take it as ``partition.clients``).
        fraction: share of clients sampled per round (at least ``min_clients``).
        min_clients: fewest clients a round needs.
        local_epochs: passes over the local set per round (SGD, ``train.batch_size``).
        min_local_steps: at least this many SGD steps per client and round (more passes over a small set),
            so that a raw client and a GGEUR-augmented one (many more samples) train equally far; 0 = exactly
            ``local_epochs`` passes (the paper's and the official code's rule).
        lr: local SGD learning rate. momentum: local SGD momentum (0 = plain SGD).
        backend: ``inprocess`` (Flower's ClientApp/ServerApp and messages, clients called in this process,
            one after another) or ``ray`` (Flower's simulation engine, one Ray actor per CPU).
        num_cpus: CPUs per client (``ray``). timeout_s: a round's wait for replies; the whole simulation
            is given ``timeout_s * (rounds + 2)``.
        eval_every: score the global model on the test set every this many rounds (and the last).
        min_reply_fraction: a training round whose received replies are fewer than this share of the
            messages sent makes the run ``degraded`` (record label ``status``); 1.0 = every sampled client.
        on_degraded: ``degrade`` (finish, labelled ``degraded``) or ``fail`` (stop with one error line; the
            checkpoint keeps the complete rounds for ``resume=true``).
        checkpoint: write ``checkpoint.npz`` after every round (``fedgeo.fl.checkpoint``) so that
            ``resume=true`` continues an interrupted run from its last complete round.
        faults: injected client faults, ``[{client: 1, from_round: 2, kind: crash|hang|slow, seconds: 5}]``
            (``fedgeo.fl.faults``); empty = none.
    """

    rounds: int = 20
    clients: int = 10
    fraction: float = 1.0
    min_clients: int = 1
    local_epochs: int = 1
    min_local_steps: int = 0
    lr: float = 0.05
    momentum: float = 0.0
    backend: str = "inprocess"
    num_cpus: int = 1
    timeout_s: float = 600.0
    eval_every: int = 1
    min_reply_fraction: float = 1.0
    on_degraded: str = "degrade"
    checkpoint: bool = True
    faults: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        for key in ("rounds", "clients", "min_clients", "local_epochs", "num_cpus", "eval_every"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"fl.{key}", f"expected a positive integer, got {v!r}")
        if (
            isinstance(self.min_local_steps, bool)
            or not isinstance(self.min_local_steps, int)
            or self.min_local_steps < 0
        ):
            raise ConfigError(
                "fl.min_local_steps", f"expected a non-negative integer, got {self.min_local_steps!r}"
            )
        if not 0 < self.fraction <= 1:
            raise ConfigError("fl.fraction", f"expected a number in (0, 1], got {self.fraction!r}")
        if not self.lr > 0:
            raise ConfigError("fl.lr", f"expected a positive number, got {self.lr!r}")
        if not 0 <= self.momentum < 1:
            raise ConfigError("fl.momentum", f"expected a number in [0, 1), got {self.momentum!r}")
        if self.backend not in BACKENDS:
            raise ConfigError("fl.backend", f"expected one of {BACKENDS}, got {self.backend!r}")
        if not self.timeout_s > 0:
            raise ConfigError("fl.timeout_s", f"expected a positive number, got {self.timeout_s!r}")
        self._check_robustness()

    def _check_robustness(self) -> None:
        """``min_reply_fraction``, ``on_degraded`` and ``faults`` (one error naming the key)."""
        f = self.min_reply_fraction
        if isinstance(f, bool) or not isinstance(f, int | float) or not 0 <= f <= 1:
            raise ConfigError("fl.min_reply_fraction", f"expected a number in [0, 1], got {f!r}")
        if self.on_degraded not in ON_DEGRADED:
            raise ConfigError("fl.on_degraded", f"expected one of {ON_DEGRADED}, got {self.on_degraded!r}")
        if not isinstance(self.checkpoint, bool):
            raise ConfigError("fl.checkpoint", f"expected true or false, got {self.checkpoint!r}")
        parse_faults(self.faults, self.rounds)

    @property
    def fault_list(self) -> tuple[Fault, ...]:
        """The validated ``faults``."""
        return parse_faults(self.faults, self.rounds)
