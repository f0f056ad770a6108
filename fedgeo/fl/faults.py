"""Injected client faults (``fl.faults``): a client crashes, hangs or is slow from a training round on.

A fault is ``{client: k, from_round: r, kind: crash|hang|slow, seconds: s}``: client ``k`` (its
``partition-id``, 0-based) misbehaves in every training round ``>= r`` (``to_round`` optional, inclusive):

- ``crash``: its ClientApp raises, so the server gets an error reply (a *failed* reply);
- ``hang``: it never answers in time: it waits ``seconds`` (0 = until the process ends), then raises, so
  the server's reply timeout (``fl.timeout_s``) expires first (a *timed out* reply);
- ``slow``: it waits ``seconds``, then trains and answers normally (timed out only if ``seconds`` exceeds
  the reply timeout).

Faults act inside the ClientApp's ``train`` handler, so the in-process grid, Ray and the Deployment
Runtime all see the same thing a real faulty client would send (or not send).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from common.errors import ConfigError

KINDS = ("crash", "hang", "slow")
_KEYS = ("client", "from_round", "to_round", "kind", "seconds")


class InjectedFault(RuntimeError):
    """What a faulty client raises (``crash``, or ``hang`` when its wait ends)."""


@dataclass(frozen=True)
class Fault:
    """One injected fault: ``client`` (partition id), rounds ``from_round..to_round`` (``None`` = to the
    end), ``kind`` and ``seconds`` (wait of ``hang``/``slow``)."""

    client: int
    from_round: int
    kind: str
    seconds: float = 0.0
    to_round: int | None = None

    def active(self, client: int, rnd: int) -> bool:
        """Whether this fault hits ``client`` in training round ``rnd``."""
        return (
            client == self.client
            and rnd >= self.from_round
            and (self.to_round is None or rnd <= self.to_round)
        )


def _int(key: str, v: Any, least: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < least:
        raise ConfigError(key, f"expected an integer >= {least}, got {v!r}")
    return v


def parse_fault(raw: Any, i: int, rounds: int) -> Fault:
    """``fl.faults[i]`` checked; ``ConfigError`` naming the key (``fl.faults[1].kind``) otherwise."""
    key = f"fl.faults[{i}]"
    if not isinstance(raw, Mapping):
        raise ConfigError(key, f"expected a mapping {{client, from_round, kind, seconds}}, got {raw!r}")
    unknown = sorted(set(map(str, raw)) - set(_KEYS))
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}", f"unknown key (expected some of {', '.join(_KEYS)})")
    if "client" not in raw or "kind" not in raw:
        raise ConfigError(f"{key}.{'client' if 'client' not in raw else 'kind'}", "is required")
    kind = raw["kind"]
    if kind not in KINDS:
        raise ConfigError(f"{key}.kind", f"expected one of {KINDS}, got {kind!r}")
    seconds = raw.get("seconds", 0.0)
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds >= 0:
        raise ConfigError(f"{key}.seconds", f"expected a non-negative number, got {seconds!r}")
    if kind == "slow" and seconds == 0:
        raise ConfigError(f"{key}.seconds", "kind=slow needs seconds > 0")
    start = _int(f"{key}.from_round", raw.get("from_round", 1), 1)
    if start > rounds:
        raise ConfigError(f"{key}.from_round", f"expected at most fl.rounds={rounds}, got {start}")
    end = raw.get("to_round")
    if end is not None:
        end = _int(f"{key}.to_round", end, start)
    return Fault(_int(f"{key}.client", raw["client"], 0), start, str(kind), float(seconds), end)


def parse_faults(raw: Any, rounds: int) -> tuple[Fault, ...]:
    """Every ``fl.faults`` entry checked (a list of mappings; empty or ``None`` = no faults)."""
    if raw is None:
        return ()
    if isinstance(raw, str | bytes) or not isinstance(raw, Sequence):
        raise ConfigError(
            "fl.faults", f"expected a list of {{client, from_round, kind, seconds}}, got {raw!r}"
        )
    return tuple(parse_fault(f, i, rounds) for i, f in enumerate(raw))


def check_clients(faults: Sequence[Fault], num_clients: int) -> None:
    """``ConfigError`` when a fault names a client the federation does not have."""
    for i, f in enumerate(faults):
        if f.client >= num_clients:
            raise ConfigError(
                f"fl.faults[{i}].client", f"expected a client id in 0..{num_clients - 1}, got {f.client}"
            )


def inject(faults: Sequence[Fault], client: int, rnd: int) -> None:
    """Act out the faults of ``client`` in training round ``rnd`` (called by the ClientApp's ``train``)."""
    for f in faults:
        if not f.active(client, rnd):
            continue
        if f.kind == "crash":
            raise InjectedFault(f"injected fault: client {client} crashed in round {rnd} (fl.faults)")
        threading.Event().wait(f.seconds if f.seconds > 0 else None)
        if f.kind == "hang":
            raise InjectedFault(f"injected fault: client {client} hung in round {rnd} (fl.faults)")
