"""The ``fl`` block of ``conf/fed.yaml``: rounds, federation size, local SGD and the simulation backend."""

from __future__ import annotations

from dataclasses import dataclass

from common.config import schema
from common.errors import ConfigError

BACKENDS = ("inprocess", "ray")


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
