"""Feature normalisation, fitted once on the real training features and applied to every feature matrix.

The local runner applies the same fitted ``Normalizer`` to real training features, to GGEUR's generated
features and to the test features, after augmentation (GGEUR works in the dataset's raw feature space, as
the official code does with unnormalised CLIP features). Kinds:

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
