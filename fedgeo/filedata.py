"""``dataset=file dataset.path=emb.npz``: a user's own embeddings.

Accepted layouts of the ``.npz``:

- one table: ``X`` (``[n, d]`` numbers), ``y`` (``[n]`` integer labels), optional ``domain`` (``[n]``
  integer domain id per row; ids need not be consecutive: domain ``j`` is the ``j``-th smallest id),
  optional ``domain_names`` (``[D]`` names, one per distinct id in increasing order; else ``domain<id>``),
  optional ``classes`` (``[C]`` names). Without ``domain`` every row is in one domain, ``all``;
- per domain: ``domains`` (``[D]`` names), ``X_<domain>`` (``[n_d, d]``) and ``y_<domain>`` (``[n_d]``)
  for every name, optional ``classes``.

Labels must lie in ``0..C-1`` (``C = len(classes)`` when given, else ``max(y) + 1``); every problem (a
missing or misshapen array, an object array, NaN features, float labels) is one ``InputError`` line that
names the file and the array.
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
    """Array ``key`` of the archive; one ``InputError`` line when it is missing or unreadable (an object
    array needs pickle, which is never allowed)."""
    if key not in z.files:
        raise InputError(
            f"{path}: missing array '{key}' (expected X, y [, domain] or X_<domain>, y_<domain>, domains)"
        )
    try:
        return z[key]
    except (ValueError, OSError) as exc:
        raise InputError(
            f"{path}: array '{key}' cannot be read without pickle (an object array?): {exc}"
        ) from None


def _table(z: Any, p: Path) -> tuple[list[tuple[np.ndarray, np.ndarray, str]], list[str]]:
    """The one-table layout as per-domain ``(X, y, where)`` pieces and the domain names."""
    X, y = _array(z, "X", p), _array(z, "y", p)
    if "domain" not in z.files:
        return [(X, y, "X/y")], ["all"]
    dom = _array(z, "domain", p)
    if dom.shape != (X.shape[0] if X.ndim else -1,) or not np.issubdtype(dom.dtype, np.integer):
        raise InputError(
            f"{p}: 'domain' must be integers of shape ({X.shape[0] if X.ndim else 'n'},), got {dom.dtype} {dom.shape}"
        )
    ids = np.unique(dom)
    names = [f"domain{int(i)}" for i in ids]
    if "domain_names" in z.files:
        names = [str(n) for n in _array(z, "domain_names", p)]
        if len(names) != ids.size:
            raise InputError(f"{p}: 'domain_names' has {len(names)} names for {ids.size} distinct domain ids")
    if y.shape != dom.shape:
        raise InputError(
            f"{p}: X/y labels must be integers of shape ({X.shape[0]},), got {y.dtype} {y.shape}"
        )
    return [(X[dom == i], y[dom == i], f"domain {int(i)}") for i in ids], names


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
    if not hasattr(z, "files"):
        raise InputError(f"{p}: a single .npy array, expected an .npz archive with X, y [, domain]")
    if "X" in z.files:
        pairs, names = _table(z, p)
        if domains is not None:
            raise ConfigError(
                "dataset.domains", f"{p} holds one table (X, y, domain): leave dataset.domains null"
            )
    elif "domains" in z.files:
        names = [str(d) for d in _array(z, "domains", p)]
        if domains is not None:
            bad = [d for d in domains if d not in names]
            if bad or not domains:
                raise ConfigError("dataset.domains", f"{p} has domains {names}, got {domains}")
            names = list(domains)
        pairs = [(_array(z, f"X_{d}", p), _array(z, f"y_{d}", p), f"domain '{d}'") for d in names]
    else:
        raise InputError(
            f"{p}: expected arrays X, y [, domain] or X_<domain>, y_<domain>, domains; got {sorted(z.files)}"
        )
    dim = None
    for X, y, where in pairs:
        _check_pair(X, y, where, p, dim)
        dim = X.shape[1]
    y_all = np.concatenate([y for _, y, _ in pairs]).astype(np.int64)
    if "classes" in z.files:
        classes = tuple(str(c) for c in _array(z, "classes", p))
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
