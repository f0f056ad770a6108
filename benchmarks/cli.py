"""argparse types for the benchmarks' options: a bad value is one usage error naming the option (exit 2)
before anything runs, never a traceback from deep inside a run."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def int_at_least(lo: int) -> Callable[[str], int]:
    """An integer ``>= lo``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {lo}, got {text!r}") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"expected an integer >= {lo}, got {text!r}")
        return value

    return parse


def float_in(lo: float, hi: float | None = None, open_lo: bool = False) -> Callable[[str], float]:
    """A number in ``[lo, hi]`` (``(lo, hi]`` with ``open_lo``; no upper end when ``hi`` is None)."""
    span = f"{'(' if open_lo else '['}{lo}, {'inf)' if hi is None else f'{hi}]'}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number in {span}, got {text!r}") from None
        if not (value > lo if open_lo else value >= lo) or (hi is not None and value > hi) or value != value:
            raise argparse.ArgumentTypeError(f"expected a number in {span}, got {text!r}")
        return value

    return parse


def int_list(lo: int) -> Callable[[str], list[int]]:
    """Comma-separated integers ``>= lo`` (``""`` = none)."""

    def parse(text: str) -> list[int]:
        try:
            values = [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
        if any(v < lo for v in values):
            raise argparse.ArgumentTypeError(f"expected integers >= {lo}, got {text!r}")
        return values

    return parse
