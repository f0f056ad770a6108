"""Synthetic embeddings in the setting GGEUR assumes.

Every class ``c`` has one anisotropic Gaussian shape ``Sigma_c = Q_c diag(lam) Q_c^T`` shared by all domains
(``Q_c`` a random rotation, ``lam`` geometric from ``anisotropy`` times the smallest value down to it,
scaled so that ``mean(lam) = 1``). Class means are ``separation`` times random unit vectors. A domain moves
the class means: ``domain_mode="shift"`` adds one random offset of length ``domain_shift`` per domain to
all its class means, ``"rotate"`` rotates all class means about the origin by the angle ``domain_shift``
(radians) in random planes. Domain 0 is the unshifted one. Samples are ``x = mu_{d,c} + Sigma_c^{1/2} z``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from common.config import schema
from common.errors import ConfigError
from common.seeding import derive_seed
from fedgeo.data import DatasetSource, EmbeddingDataset

DOMAIN_MODES = ("shift", "rotate")


@dataclass(frozen=True)
class SyntheticData:
    """Generated train and test sets and the true parameters.

    Attributes:
        train, test: the datasets (``float32 [n, d]`` features).
        class_means: ``float64 [D, C, d]``, the mean of class ``c`` in domain ``d``.
        class_covs: ``float64 [C, d, d]``, the shared shape of each class.
    """

    train: EmbeddingDataset
    test: EmbeddingDataset
    class_means: np.ndarray
    class_covs: np.ndarray


def _check(name: str, value: float, low: float, integer: bool = False) -> None:
    ok = isinstance(value, int | np.integer) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok or value < low:
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"dataset.{name}", f"expected {kind} >= {low}, got {value!r}")


def _random_rotation(rng: np.random.Generator, d: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def _domain_means(
    base: np.ndarray, num_domains: int, shift: float, mode: str, rng: np.random.Generator
) -> np.ndarray:
    """Class means per domain ``[D, C, d]``: domain 0 at ``base [C, d]``, the others shifted by ``shift``
    along a random direction (``shift``) or rotated by ``shift`` radians in random planes (``rotate``)."""
    d = base.shape[1]
    means = np.empty((num_domains, *base.shape))
    for k in range(num_domains):
        if k == 0 or shift == 0.0:
            means[k] = base
        elif mode == "shift":
            v = rng.standard_normal(d)
            means[k] = base + shift * v / np.linalg.norm(v)
        else:
            u = _random_rotation(rng, d)
            block = np.eye(d)
            c, s = np.cos(shift), np.sin(shift)
            for j in range(0, d - 1, 2):
                block[j : j + 2, j : j + 2] = [[c, -s], [s, c]]
            means[k] = base @ (u @ block @ u.T).T
    return means


def _draw(
    means: np.ndarray, rotations: np.ndarray, lam: np.ndarray, per_class: int, rng: np.random.Generator
) -> EmbeddingDataset:
    """``per_class`` samples of every (domain, class): ``means [D, C, d]`` plus noise of eigenvalues
    ``lam [d]`` in each class's frame ``rotations [C, d, d]``."""
    num_domains, num_classes, d = means.shape
    feats, labels, domains = [], [], []
    for k in range(num_domains):
        for c in range(num_classes):
            z = rng.standard_normal((per_class, d))
            feats.append(means[k, c] + (z * np.sqrt(lam)) @ rotations[c].T)
            labels.append(np.full(per_class, c, dtype=np.int64))
            domains.append(np.full(per_class, k, dtype=np.int64))
    return EmbeddingDataset(
        features=np.concatenate(feats).astype(np.float32),
        labels=np.concatenate(labels),
        domains=np.concatenate(domains),
        domain_names=tuple(f"domain{k}" for k in range(num_domains)),
        class_names=tuple(f"class{c}" for c in range(num_classes)),
        name="synthetic",
    )


def make_synthetic(
    num_classes: int = 10,
    dim: int = 32,
    num_domains: int = 1,
    train_per_class: int = 200,
    test_per_class: int = 100,
    separation: float = 4.0,
    anisotropy: float = 50.0,
    domain_shift: float = 3.0,
    domain_mode: str = "shift",
    seed: int = 0,
) -> SyntheticData:
    """Generate a labelled multi-domain embedding dataset.

    Args:
        num_classes, dim, num_domains: C, d, D.
        train_per_class, test_per_class: samples per (domain, class) in each set.
        separation: length of each class mean vector (class means are that far from the origin).
        anisotropy: ratio of the largest to the smallest eigenvalue of every class shape (>= 1).
        domain_shift: offset length (``shift``) or rotation angle in radians (``rotate``).
        domain_mode: ``shift`` or ``rotate``.
        seed: the generator's seed; the same arguments give identical arrays.
    """
    for key, value, low in (
        ("num_classes", num_classes, 2),
        ("dim", dim, 1),
        ("num_domains", num_domains, 1),
    ):
        _check(key, value, low, integer=True)
    _check("train_per_class", train_per_class, 1, integer=True)
    _check("test_per_class", test_per_class, 1, integer=True)
    _check("separation", separation, 0.0)
    _check("anisotropy", anisotropy, 1.0)
    _check("domain_shift", domain_shift, 0.0)
    if domain_mode not in DOMAIN_MODES:
        raise ConfigError("dataset.domain_mode", f"expected one of {DOMAIN_MODES}, got {domain_mode!r}")
    rng = np.random.default_rng(seed)
    C, d, D = num_classes, dim, num_domains
    lam = np.geomspace(float(anisotropy), 1.0, d) if d > 1 else np.ones(1)
    lam = lam / lam.mean()
    rotations = np.stack([_random_rotation(rng, d) for _ in range(C)])  # [C, d, d]
    covs = np.einsum("cij,j,ckj->cik", rotations, lam, rotations)
    directions = rng.standard_normal((C, d))
    base = separation * directions / np.linalg.norm(directions, axis=1, keepdims=True)
    means = _domain_means(base, D, domain_shift, domain_mode, rng)

    def draw(per_class: int) -> EmbeddingDataset:
        return _draw(means, rotations, lam, per_class, rng)

    train = draw(train_per_class)
    test = draw(test_per_class)
    return SyntheticData(train=train, test=test, class_means=means, class_covs=covs)


@schema("dataset", "synthetic")
@dataclass(frozen=True)
class SyntheticSource(DatasetSource):
    """``dataset=synthetic``: ``make_synthetic`` with these arguments and a seed derived from the run's.

    Has its own test set (``test_per_class`` per domain and class).
    """

    name: str = "synthetic"
    num_classes: int = 10
    dim: int = 32
    num_domains: int = 1
    train_per_class: int = 100
    test_per_class: int = 50
    separation: float = 4.0
    anisotropy: float = 50.0
    domain_shift: float = 3.0
    domain_mode: str = "shift"

    def read(self, paths: Mapping[str, Any], seed: int) -> tuple[EmbeddingDataset, EmbeddingDataset]:
        syn = make_synthetic(
            num_classes=self.num_classes,
            dim=self.dim,
            num_domains=self.num_domains,
            train_per_class=self.train_per_class,
            test_per_class=self.test_per_class,
            separation=self.separation,
            anisotropy=self.anisotropy,
            domain_shift=self.domain_shift,
            domain_mode=self.domain_mode,
            seed=derive_seed(seed, "synthetic"),
        )
        return syn.train, syn.test
