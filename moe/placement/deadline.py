"""A placement's time budget as one object: when it started and when it ends (``time.monotonic()`` seconds).

A placement makes one ``Deadline`` from its ``time_limit_s`` when ``place`` starts and passes it down: its
phases take parts of it (``fraction``, ``share_of_left``), and ``milp.solve`` stops by it. The monotonic
clock is system-wide, so the instant also holds in the HiGHS worker process.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Deadline:
    """A wall-clock budget.

    Attributes:
        start: ``time.monotonic()`` seconds when the budget began.
        end: ``time.monotonic()`` seconds when it runs out (``>= start``).
    """

    start: float
    end: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        """A budget of ``seconds`` (>= 0) starting now."""
        now = time.monotonic()
        return cls(now, now + max(0.0, float(seconds)))

    @property
    def budget_s(self) -> float:
        """The whole budget, seconds."""
        return self.end - self.start

    def elapsed(self) -> float:
        """Seconds since ``start``."""
        return time.monotonic() - self.start

    def left(self) -> float:
        """Seconds until ``end`` (0 once it has passed)."""
        return max(0.0, self.end - time.monotonic())

    def expired(self) -> bool:
        """Whether ``end`` has passed."""
        return time.monotonic() >= self.end

    def fraction(self, share: float) -> Deadline:
        """The same start, ending after ``share`` (in [0, 1]) of the whole budget: a phase's milestone."""
        return Deadline(self.start, self.start + share * self.budget_s)

    def share_of_left(self, share: float) -> Deadline:
        """From now, ``share`` (in [0, 1]) of the time left: one of several phases still to run."""
        now = time.monotonic()
        return Deadline(now, now + share * max(0.0, self.end - now))

    def at_least(self, seconds: float) -> Deadline:
        """This deadline, moved later if needed so that at least ``seconds`` are left from now."""
        now = time.monotonic()
        return Deadline(self.start, max(self.end, now + seconds))
