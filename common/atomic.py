"""Atomic file writes: a reader sees the old file or the new one, never a half-written one.

Every writer goes through a temporary file in the same folder (name starting with ``.tmp-``), flushes and
fsyncs it, then renames it over the target. Readers (the aggregator) ignore ``.tmp-*`` files.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

TMP_PREFIX = ".tmp-"


def _atomic_write(path: str | os.PathLike[str], write: Callable[[io.BufferedWriter], None]) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + target.name + ".", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return target


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    return _atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically; returns the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, indent: int | None = 2) -> Path:
    """Serialise ``obj`` as JSON (NaN and inf refused) and write it atomically."""
    text = json.dumps(obj, indent=indent, sort_keys=False, allow_nan=False, default=_json_default)
    return atomic_write_text(path, text + "\n")


def atomic_savez(path: str | os.PathLike[str], compressed: bool = True, **arrays: Any) -> Path:
    """Save arrays as ``.npz`` atomically (``np.savez_compressed`` unless ``compressed=False``)."""
    saver = np.savez_compressed if compressed else np.savez
    return _atomic_write(path, lambda fh: saver(fh, **arrays))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")
