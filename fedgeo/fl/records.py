"""Arrays <-> Flower records, and the bytes a record carries."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord

from fedgeo.fl.training import Arrays


def to_record(arrays: Arrays) -> ArrayRecord:
    """``dict[str, np.ndarray]`` as an ``ArrayRecord`` (names kept, order kept)."""
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def from_record(record: ArrayRecord) -> Arrays:
    """An ``ArrayRecord`` back as ``dict[str, np.ndarray]``."""
    return {k: a.numpy() for k, a in record.items()}


def record_bytes(record: ArrayRecord) -> int:
    """Payload bytes of an ``ArrayRecord`` (the arrays' serialised data)."""
    return int(sum(len(a.data) for a in record.values()))
