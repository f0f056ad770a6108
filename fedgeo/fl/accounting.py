"""Round accounting: replies expected, received, failed and timed out, and the run's honest status.

A reply is *received* when it carries a result, *failed* when it is an error reply (the ClientApp raised
or crashed), *timed out* when it never came within the round's timeout (``fl.timeout_s``) or the
SuperLink answered for an unreachable node or an expired message. A round whose received share is below
``fl.min_reply_fraction`` makes the run ``degraded``, or stops it when ``fl.on_degraded=fail``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from flwr.app import Message
from flwr.common.constant import ErrorCode

from common.errors import SuiteError

# Error replies that mean "no answer in time" rather than "the client failed".
TIMEOUT_CODES = frozenset(
    {ErrorCode.MESSAGE_UNAVAILABLE, ErrorCode.REPLY_MESSAGE_UNAVAILABLE, ErrorCode.NODE_UNAVAILABLE}
)
COUNT_KEYS = ("expected", "received", "failed", "timed_out")


class DegradedRun(SuiteError):
    """A round fell below ``fl.min_reply_fraction`` under ``fl.on_degraded=fail``."""


@dataclass(frozen=True)
class RoundCount:
    """One round's replies: ``phase`` (``train`` or a preparation query: ``norm``, ``ggeur``, ``prepare``),
    ``round`` (training round, 0 for the preparation queries) and the four counts."""

    phase: str
    round: int
    expected: int
    received: int
    failed: int
    timed_out: int

    @property
    def fraction(self) -> float:
        """Received share of the expected replies (1.0 when nothing was expected)."""
        return self.received / self.expected if self.expected else 1.0

    def as_dict(self) -> dict[str, float | str]:
        return asdict(self)

    def text(self) -> str:
        where = f"round {self.round}" if self.phase == "train" else f"the {self.phase} query"
        return (
            f"{where} received {self.received} of {self.expected} replies "
            f"({self.failed} failed, {self.timed_out} timed out)"
        )


def count_replies(phase: str, rnd: int, sent: Sequence[Message], replies: Sequence[Message]) -> RoundCount:
    """Count ``replies`` to the ``sent`` messages (a missing reply is a timed-out one)."""
    errors = [r for r in replies if r.has_error()]
    late = sum(1 for r in errors if r.error.code in TIMEOUT_CODES)
    received = len(replies) - len(errors)
    return RoundCount(
        phase, rnd, len(sent), received, len(errors) - late, late + max(0, len(sent) - len(replies))
    )


def is_degraded(count: RoundCount, min_fraction: float) -> bool:
    """Whether ``count`` is below ``min_fraction`` (compared on counts, so 2/3 < 1.0 exactly)."""
    return count.received < min_fraction * count.expected - 1e-9


def degraded_error(count: RoundCount, min_fraction: float, last_complete: int) -> DegradedRun:
    """The one-line error of a run stopped by ``fl.on_degraded=fail``."""
    kept = (
        f"rounds 1-{last_complete} are checkpointed (resume=true continues)"
        if last_complete
        else "no round finished"
    )
    return DegradedRun(
        f"fl.min_reply_fraction={min_fraction:g}: {count.text()} and fl.on_degraded=fail; {kept}"
    )


def totals(counts: Sequence[dict]) -> dict[str, float]:
    """The record's metrics over the training rounds' counts: ``replies_<key>_total``, the lowest reply
    fraction and the number of degraded rounds (``counts`` rows carry ``degraded``)."""
    train = [c for c in counts if c["phase"] == "train"]
    out = {f"replies_{k}_total": float(sum(c[k] for c in train)) for k in COUNT_KEYS}
    fracs = [c["received"] / c["expected"] if c["expected"] else 1.0 for c in train]
    out["reply_fraction_min"] = float(min(fracs)) if fracs else 1.0
    out["rounds_degraded"] = float(sum(1 for c in counts if c.get("degraded")))
    return out
