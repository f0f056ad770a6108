"""argparse types for the benchmarks' options, and their run: a bad value is one usage error naming the option
(exit 2) before anything runs, and an input error the run finds (``ConfigError``, ``InputError``) is one
``error:`` line (exit 2), never a traceback from deep inside a run."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.errors import ConfigError, InputError
from common.experiment import RunContext, RunOutput, run_experiment


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


def int_list(lo: int, what: str | None = None) -> Callable[[str], list[int]]:
    """Comma-separated integers ``>= lo``; ``""`` = none, unless ``what`` names one (then at least one)."""

    def parse(text: str) -> list[int]:
        try:
            values = [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
        if any(v < lo for v in values):
            raise argparse.ArgumentTypeError(f"expected integers >= {lo}, got {text!r}")
        if what is not None and not values:
            raise argparse.ArgumentTypeError(f"expected at least one {what}")
        return values

    return parse


def run(
    ap: argparse.ArgumentParser, config: dict[str, Any], body: Callable[[RunContext], RunOutput], out: Path
) -> None:
    """``run_experiment`` of suite ``moe`` into ``out``; a ``ConfigError`` / ``InputError`` (for example more
    windows than the trace has prompts) ends the program with one ``error:`` line and exit status 2."""
    try:
        run_experiment(config, "moe", body, run_dir=out)
    except (ConfigError, InputError) as exc:
        ap.exit(2, f"error: {exc}\n")
