"""``dataset=file dataset.path=emb.npz``: a user's own embeddings.

Accepted layouts of the ``.npz``:

- multi-domain: ``domains`` (``[D]`` names), ``X_<domain>`` (``[n_d, d]`` numbers) and ``y_<domain>``
  (``[n_d]`` integer labels) for every name, optional ``classes`` (``[C]`` names);
- one domain: ``X`` (``[n, d]``) and ``y`` (``[n]``), optional ``classes``.

Labels must lie in ``0..C-1`` (``C = len(classes)`` when given, else ``max(y) + 1``); every problem is one
``InputError`` line that names the file and the array.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.config import schema
from common.errors import ConfigError, InputError
from fedgeo.data import DatasetSource, EmbeddingDataset


def _array(z: Any, key: str, path: Path) -> np.ndarray:
    if key not in z.files:
        raise InputError(f"{path}: missing array '{key}' (expected X_<domain>, y_<domain>, domains or X, y)")
    return z[key]


def _check_pair(X: np.ndarray, y: np.ndarray, where: str, path: Path, dim: int | None) -> None:
    if X.ndim != 2 or not np.issubdtype(X.dtype, np.number):
        raise InputError(f"{path}: {where} features must be a numeric [n, d] array, got {X.dtype} {X.shape}")
    if dim is not None and X.shape[1] != dim:
        raise InputError(f"{path}: {where} features have {X.shape[1]} dims, the first domain {dim}")
    if y.shape != (X.shape[0],) or not np.issubdtype(y.dtype, np.integer):
        raise InputError(
            f"{path}: {where} labels must be integers of shape ({X.shape[0]},), got {y.dtype} {y.shape}"
        )
    if not np.all(np.isfinite(X)):
        raise InputError(f"{path}: {where} features hold NaN or inf")


def load_embeddings_npz(path: str | Path, domains: list[str] | None = None) -> EmbeddingDataset:
    """Read and validate a user's embedding file (layouts in the module docstring)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"dataset.path: file {p} not found")
    try:
        z = np.load(p, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"{p}: not a readable .npz archive ({exc})") from exc
    if "domains" in z.files:
        names = [str(d) for d in z["domains"]]
        if domains is not None:
            bad = [d for d in domains if d not in names]
            if bad or not domains:
                raise ConfigError("dataset.domains", f"{p} has domains {names}, got {domains}")
            names = list(domains)
        pairs = [(_array(z, f"X_{d}", p), _array(z, f"y_{d}", p), f"domain '{d}'") for d in names]
    else:
        pairs = [(_array(z, "X", p), _array(z, "y", p), "X/y")]
        names = ["all"]
    dim = None
    for X, y, where in pairs:
        _check_pair(X, y, where, p, dim)
        dim = X.shape[1]
    y_all = np.concatenate([y for _, y, _ in pairs]).astype(np.int64)
    if "classes" in z.files:
        classes = tuple(str(c) for c in z["classes"])
    else:
        classes = tuple(str(c) for c in range(int(y_all.max()) + 1 if y_all.size else 0))
    if y_all.size == 0 or y_all.min() < 0 or y_all.max() >= len(classes) or len(classes) < 2:
        lo, hi = (int(y_all.min()), int(y_all.max())) if y_all.size else (0, -1)
        raise InputError(f"{p}: labels must lie in 0..C-1 with C={len(classes)} >= 2 classes, got {lo}..{hi}")
    dom = np.concatenate([np.full(len(y), i, dtype=np.int64) for i, (_, y, _) in enumerate(pairs)])
    X_all = np.concatenate([X for X, _, _ in pairs]).astype(np.float32)
    return EmbeddingDataset(X_all, y_all, dom, tuple(names), classes, name=f"file:{p.stem}")


@schema("dataset", "file")
@dataclass(frozen=True)
class FileSource(DatasetSource):
    """``dataset=file``: embeddings from ``path`` (an ``.npz``; module docstring), split by
    ``test_fraction``."""

    name: str = "file"
    path: str = ""
    domains: list[str] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.path:
            raise ConfigError("path", "missing: set dataset.path=<embeddings.npz>")

    def read(self, paths: Mapping[str, Any], seed: int) -> EmbeddingDataset:
        return load_embeddings_npz(self.path, self.domains)
