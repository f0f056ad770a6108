"""Feature normalisation, fitted from the clients' statistics and applied to every feature matrix.

In a federation nobody holds the whole training split: the normaliser is fitted from per-client sums
(``norm_stats`` on each client, ``merge_norm_stats`` on the server, ``fit_from_stats``), i.e. on exactly the
rows the clients hold, never on the test set. Clients normalise their rows *before* GGEUR, so the class
statistics, the shapes and the generated samples all live in the space the classifier sees. Kinds:

- ``none``: identity.
- ``l2``: every row divided by its Euclidean norm.
- ``standardize``: ``(x - mean) / std`` per dimension, mean and std of the fitted features (a dimension
  with zero spread keeps scale 1). Both are sums over samples, so a federation can aggregate them exactly.
- ``l1_standardize``: every row divided by its L1 norm (the usual step for bag-of-words histograms such as
  the SURF features), then ``standardize``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.errors import ConfigError, InputError

NORMALIZATIONS = ("none", "l2", "standardize", "l1_standardize")
_EPS = 1e-12


def _row_scale(X: np.ndarray, ord_: int) -> np.ndarray:
    norms = np.linalg.norm(X, ord=ord_, axis=1, keepdims=True)
    return X / np.maximum(norms, _EPS)


@dataclass(frozen=True)
class Normalizer:
    """A fitted normalisation; ``mean`` and ``scale`` are ``float64 [d]`` (``None`` for row-only kinds)."""

    kind: str
    mean: np.ndarray | None = None
    scale: np.ndarray | None = None

    @classmethod
    def fit(cls, kind: str, X: np.ndarray) -> Normalizer:
        """Fit ``kind`` on ``X`` (``[n, d]``)."""
        if kind not in NORMALIZATIONS:
            raise ConfigError("dataset.normalize", f"expected one of {NORMALIZATIONS}, got {kind!r}")
        if kind in ("none", "l2"):
            return cls(kind)
        Z = np.asarray(X, dtype=np.float64)
        if kind == "l1_standardize":
            Z = _row_scale(Z, 1)
        if Z.shape[0] == 0:
            raise InputError("cannot fit a normalisation on zero samples")
        mean = Z.mean(axis=0)
        std = Z.std(axis=0)
        return cls(kind, mean=mean, scale=np.where(std > _EPS, std, 1.0))

    def __call__(self, X: np.ndarray) -> np.ndarray:
        """Normalised copy of ``X`` (``[n, d]``) as ``float32``."""
        Z = np.asarray(X, dtype=np.float64)
        if self.mean is not None and Z.shape[1] != self.mean.shape[0]:
            raise InputError(f"normaliser fitted on {self.mean.shape[0]} dimensions, got {Z.shape[1]}")
        if self.kind == "l2":
            Z = _row_scale(Z, 2)
        elif self.kind == "l1_standardize":
            Z = _row_scale(Z, 1)
        if self.mean is not None and self.scale is not None:
            Z = (Z - self.mean) / self.scale
        return Z.astype(np.float32)


@dataclass(frozen=True)
class NormStats:
    """Per-dimension sufficient statistics of one client's (row-scaled) features, for ``fit_from_stats``.

    Attributes:
        count: rows. mean: ``float64 [d]``. m2: ``float64 [d]``, sum of squared deviations from ``mean``.
    """

    count: int
    mean: np.ndarray
    m2: np.ndarray


def _prescale(kind: str, X: np.ndarray) -> np.ndarray:
    Z = np.asarray(X, dtype=np.float64)
    return _row_scale(Z, 1) if kind == "l1_standardize" else Z


def norm_stats(kind: str, X: np.ndarray) -> NormStats:
    """One client's statistics for a ``kind`` normaliser: rows are L1-scaled first for ``l1_standardize``."""
    if kind not in NORMALIZATIONS:
        raise ConfigError("dataset.normalize", f"expected one of {NORMALIZATIONS}, got {kind!r}")
    Z = _prescale(kind, X)
    if Z.shape[0] == 0:
        return NormStats(0, np.zeros(Z.shape[1]), np.zeros(Z.shape[1]))
    mean = Z.mean(axis=0)
    return NormStats(int(Z.shape[0]), mean, ((Z - mean) ** 2).sum(axis=0))


def merge_norm_stats(stats: list[NormStats]) -> NormStats:
    """The statistics of the union of the clients' rows (Chan's pairwise merge, per dimension)."""
    if not stats:
        raise InputError("merge_norm_stats needs at least one client")
    n, mean, m2 = 0, np.zeros_like(stats[0].mean), np.zeros_like(stats[0].m2)
    for s in stats:
        if s.count == 0:
            continue
        tot = n + s.count
        delta = s.mean - mean
        mean = mean + delta * (s.count / tot)
        m2 = m2 + s.m2 + delta**2 * (n * s.count / tot)
        n = tot
    return NormStats(n, mean, m2)


def fit_from_stats(kind: str, stats: NormStats) -> Normalizer:
    """The ``kind`` normaliser of the rows behind ``stats`` (the clients' union): what ``Normalizer.fit``
    gives on those rows, from sums alone, so that no server sees a feature row."""
    if kind not in NORMALIZATIONS:
        raise ConfigError("dataset.normalize", f"expected one of {NORMALIZATIONS}, got {kind!r}")
    if kind in ("none", "l2"):
        return Normalizer(kind)
    if stats.count == 0:
        raise InputError("cannot fit a normalisation on zero samples")
    std = np.sqrt(stats.m2 / stats.count)
    return Normalizer(kind, mean=stats.mean.copy(), scale=np.where(std > _EPS, std, 1.0))
