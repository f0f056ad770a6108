"""Progress for long work: a rich bar on a terminal, periodic log lines elsewhere (CI, files)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from common.log import get_logger

T = TypeVar("T")


def track(iterable: Iterable[T], total: int | None = None, description: str = "working") -> Iterator[T]:
    """Yield from ``iterable`` while showing progress.

    On a terminal: a rich progress bar. Otherwise: a log line about every 10% (or every 30 s when the total
    is unknown). ``SUITE_PROGRESS=0`` silences both.
    """
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if os.environ.get("SUITE_PROGRESS", "1") == "0":
        yield from iterable
        return
    if sys.stderr.isatty():
        from rich.progress import track as rich_track

        yield from rich_track(iterable, total=total, description=description, transient=True)
        return
    log = get_logger("progress")
    step = max(1, (total or 0) // 10)
    last = start = time.monotonic()
    for i, item in enumerate(iterable, start=1):
        yield item
        now = time.monotonic()
        if (total and (i % step == 0 or i == total)) or (not total and now - last > 30):
            last = now
            frac = f"{i}/{total}" if total else str(i)
            log.info(f"{description}: {frac} ({now - start:.1f} s)")
