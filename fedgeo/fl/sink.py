"""``RunSink``: what the server app records of a run (rounds, exchange facts, failures, reply counts)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# The fields a deployed server writes to its result file and the runner reads back (``report``).
REPORTED = ("rounds", "exchange", "failures", "counts", "resumed_round", "train", "lr_search")


@dataclass
class RunSink:
    """What the server app reports back to the runner (in the runner's process, or through a file)."""

    rounds: list[dict[str, float]] = field(default_factory=list)
    exchange: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    train: list[dict[str, float]] = field(default_factory=list)
    lr_search: dict[str, float] = field(default_factory=dict)
    counts: list[dict[str, Any]] = field(default_factory=list)  # fedgeo.fl.accounting rows, every round
    on_round: Any = None  # callable(round, metrics) for live logging
    on_count: Any = None  # callable(count row) for live logging
    error: BaseException | None = None  # why the server app stopped early (re-raised by the runner)
    resumed_round: int = 0  # the checkpoint's round a resumed run started after (0 = from scratch)

    def progress(self) -> dict[str, Any]:
        """What a checkpoint keeps of the run's records (the training rounds' part)."""
        return {"rounds": self.rounds, "failures": [f for f in self.failures if f.startswith("round ")],
                "counts": [c for c in self.counts if c["phase"] == "train"], "train": self.train}  # fmt: skip

    def restore(self, progress: dict[str, Any]) -> None:
        """Continue from a checkpoint's ``progress`` (this run's preparation records kept)."""
        self.rounds = list(progress["rounds"])
        self.failures = [f for f in self.failures if not f.startswith("round ")] + progress["failures"]
        self.counts = [c for c in self.counts if c["phase"] != "train"] + progress["counts"]
        self.train = list(progress.get("train", []))

    def report(self) -> dict[str, Any]:
        """The records as plain JSON-able data (a deployed server's result file)."""
        return {k: getattr(self, k) for k in REPORTED}

    @classmethod
    def from_report(cls, report: dict[str, Any]) -> RunSink:
        """A sink holding ``report``'s records (``report``'s inverse)."""
        return cls(**{k: report[k] for k in REPORTED})
