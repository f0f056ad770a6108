"""The ``fl`` block of ``conf/fed.yaml``: rounds, federation size, local SGD and the simulation backend."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from common.config import schema
from common.errors import ConfigError
from fedgeo.fl.faults import Fault, parse_faults

BACKENDS = ("inprocess", "ray")
LOCAL_BUDGETS = ("epochs", "steps")
WEIGHT_BY = ("raw", "augmented")
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
        local_budget: how far a client trains per round. ``epochs``: ``local_epochs`` passes over its set
            (the paper's and the official code's rule: a GGEUR-augmented client, with many more samples,
            takes many more SGD steps than a raw one); ``steps``: exactly ``local_steps`` SGD steps
            (minibatches of ``train.batch_size``, reshuffled every pass, the last pass cut short), the same
            for every client, so that a gain is the data's and not extra local training.
        local_epochs: passes per round under ``local_budget=epochs``.
        local_steps: SGD steps per round under ``local_budget=steps``.
        weight_by: FedAvg-style aggregation weights: ``raw`` (each client's own sample count, the same
            with and without GGEUR) or ``augmented`` (the size of the set it trained on).
        lr: local SGD learning rate. momentum: local SGD momentum (0 = plain SGD).
        lr_candidates: when not empty, the learning rate is chosen before training among these by a search
            on the clients' own training data (``fedgeo.fl.lr_search``; never the test set); ``lr`` is then
            unused and the record holds the chosen one (``lr_selected``).
        lr_search_rounds: local budgets each candidate trains for in the search.
        min_loss_drop: a run whose global training loss fell by less than this fraction from the first to
            the last round is recorded ``converged=false`` (and warned about on the console).
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
    local_budget: str = "epochs"
    local_epochs: int = 1
    local_steps: int = 32
    weight_by: str = "raw"
    lr: float = 0.05
    lr_candidates: list[float] = field(default_factory=list)
    lr_search_rounds: int = 3
    min_loss_drop: float = 0.05
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
        keys = ("rounds", "clients", "min_clients", "local_epochs", "local_steps", "num_cpus", "eval_every",
                "lr_search_rounds")  # fmt: skip
        for key in keys:
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"fl.{key}", f"expected a positive integer, got {v!r}")
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
        self._check_training()
        self._check_robustness()

    @property
    def steps_per_round(self) -> int:
        """SGD steps every client takes per round under ``local_budget=steps``; 0 under ``epochs``."""
        return self.local_steps if self.local_budget == "steps" else 0

    def _check_training(self) -> None:
        """``local_budget``, ``weight_by``, ``lr_candidates`` and ``min_loss_drop`` (one error naming the key)."""
        for key, allowed in (("local_budget", LOCAL_BUDGETS), ("weight_by", WEIGHT_BY)):
            if getattr(self, key) not in allowed:
                raise ConfigError(f"fl.{key}", f"expected one of {allowed}, got {getattr(self, key)!r}")
        if any(
            isinstance(v, bool) or not isinstance(v, int | float) or not v > 0 for v in self.lr_candidates
        ):
            raise ConfigError(
                "fl.lr_candidates", f"expected a list of positive numbers, got {self.lr_candidates!r}"
            )
        if not 0 <= self.min_loss_drop < 1:
            raise ConfigError("fl.min_loss_drop", f"expected a number in [0, 1), got {self.min_loss_drop!r}")

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
