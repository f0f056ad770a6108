"""The dataset types of ``fedgeo`` and the stratified train/test split.

An ``EmbeddingDataset`` is what every algorithm here consumes: features ``float32 [n, d]``, labels
``int64 [n]`` in ``0..C-1``, and a domain id ``int64 [n]`` indexing ``domain_names``. An ``ImageDataset``
holds ``uint8 [n, H, W, 3]`` images for the feature-extraction path (``fedgeo.clip_features``).
``DatasetSource`` is the base of every ``dataset`` config option.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from common.errors import ConfigError, InputError
from common.seeding import derive_seed
from fedgeo.normalize import NORMALIZATIONS


def _check_labels(name: str, labels: np.ndarray, domains: np.ndarray, n: int, C: int, D: int) -> None:
    if labels.shape != (n,) or domains.shape != (n,):
        raise InputError(
            f"dataset '{name}': labels and domains must have shape ({n},), got {labels.shape} and {domains.shape}"
        )
    if n and (labels.min() < 0 or labels.max() >= C):
        raise InputError(
            f"dataset '{name}': labels must lie in 0..{C - 1}, got {labels.min()}..{labels.max()}"
        )
    if n and (domains.min() < 0 or domains.max() >= D):
        raise InputError(f"dataset '{name}': domain ids must lie in 0..{D - 1}")


@dataclass(frozen=True)
class EmbeddingDataset:
    """Embeddings of one dataset (all domains together).

    Attributes:
        features: ``float32 [n, d]``.
        labels: ``int64 [n]``, class ids in ``0..len(class_names)-1``.
        domains: ``int64 [n]``, domain ids in ``0..len(domain_names)-1``.
        domain_names: one name per domain.
        class_names: one name per class.
        name: the dataset's name (for messages and records).
        split: optional ``int8 [n]``: 0 = train, 1 = test, the dataset's own split; ``None`` if it has none.
    """

    features: np.ndarray
    labels: np.ndarray
    domains: np.ndarray
    domain_names: tuple[str, ...]
    class_names: tuple[str, ...]
    name: str = "dataset"
    split: np.ndarray | None = None

    def __post_init__(self) -> None:
        X = self.features
        if X.ndim != 2 or X.dtype != np.float32:
            raise InputError(
                f"dataset '{self.name}': features must be float32 [n, d], got {X.dtype} {X.shape}"
            )
        if not np.all(np.isfinite(X)):
            raise InputError(f"dataset '{self.name}': features hold NaN or inf")
        n = X.shape[0]
        _check_labels(self.name, self.labels, self.domains, n, self.num_classes, self.num_domains)
        if self.split is not None and self.split.shape != (n,):
            raise InputError(f"dataset '{self.name}': split must have shape ({n},)")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_domains(self) -> int:
        return len(self.domain_names)

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def subset(self, index: np.ndarray) -> EmbeddingDataset:
        """The rows ``index`` (integer array) as a new dataset with the same names."""
        idx = np.asarray(index, dtype=np.int64)
        return EmbeddingDataset(
            features=self.features[idx],
            labels=self.labels[idx],
            domains=self.domains[idx],
            domain_names=self.domain_names,
            class_names=self.class_names,
            name=self.name,
            split=None if self.split is None else self.split[idx],
        )


@dataclass(frozen=True)
class ImageDataset:
    """Images for feature extraction: ``images uint8 [n, H, W, 3]`` (RGB) or a list of file paths.

    ``paths`` is used instead of ``images`` for datasets too large to hold in memory (image folders);
    exactly one of the two is set. Labels, domains, names and split as in ``EmbeddingDataset``.
    """

    labels: np.ndarray
    domains: np.ndarray
    domain_names: tuple[str, ...]
    class_names: tuple[str, ...]
    name: str
    images: np.ndarray | None = None
    paths: tuple[str, ...] | None = None
    split: np.ndarray | None = None

    def __post_init__(self) -> None:
        if (self.images is None) == (self.paths is None):
            raise InputError(f"image dataset '{self.name}': set exactly one of images and paths")
        if self.images is not None and (
            self.images.ndim != 4 or self.images.shape[3] != 3 or self.images.dtype != np.uint8
        ):
            raise InputError(
                f"image dataset '{self.name}': images must be uint8 [n, H, W, 3], "
                f"got {self.images.dtype} {self.images.shape}"
            )
        _check_labels(
            self.name, self.labels, self.domains, len(self), len(self.class_names), len(self.domain_names)
        )

    def __len__(self) -> int:
        return int(self.images.shape[0]) if self.images is not None else len(self.paths or ())


def train_test_split(
    ds: EmbeddingDataset, test_fraction: float, seed: int
) -> tuple[EmbeddingDataset, EmbeddingDataset]:
    """Split into train and test sets.

    Uses the dataset's own ``split`` when it has one; otherwise a seeded split stratified by
    (domain, class): in every cell, ``round(test_fraction * cell size)`` rows go to the test set (at least
    one when the cell has two or more rows, none when it has one).

    Returns:
        ``(train, test)``; both keep the row order of ``ds`` inside each part.
    """
    if ds.split is not None:
        return ds.subset(np.flatnonzero(ds.split == 0)), ds.subset(np.flatnonzero(ds.split == 1))
    if not 0.0 < test_fraction < 1.0:
        raise InputError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction!r}")
    rng = np.random.default_rng(seed)
    is_test = np.zeros(len(ds), dtype=bool)
    cell = ds.domains * ds.num_classes + ds.labels
    for c in np.unique(cell):
        rows = np.flatnonzero(cell == c)
        if rows.size < 2:
            continue
        k = min(max(1, round(test_fraction * rows.size)), rows.size - 1)
        is_test[rng.choice(rows, size=k, replace=False)] = True
    return ds.subset(np.flatnonzero(~is_test)), ds.subset(np.flatnonzero(is_test))


def required_path(paths: Mapping[str, Any], key: str) -> str:
    """``paths[key]`` as a string; a ``ConfigError`` naming ``paths.<key>`` when it is missing."""
    value = paths.get(key)
    if not value:
        raise ConfigError(f"paths.{key}", "missing (set it on the command line)")
    return str(value)


@dataclass(frozen=True)
class DatasetSource:
    """Base of the ``dataset`` options: where embeddings come from and how they are normalised.

    A new dataset is one module with a ``@schema("dataset", "<name>")`` subclass implementing ``read`` and
    one ``conf/dataset/<name>.yaml`` (see ``common.config``).

    Attributes:
        name: the dataset's name in records and tables.
        normalize: ``none``, ``l2``, ``standardize`` or ``l1_standardize`` (``fedgeo.normalize``).
        test_fraction: share of every (domain, class) cell held out as the test set, when the data has no
            own split.
    """

    name: str = "dataset"
    normalize: str = "none"
    test_fraction: float = 0.3

    def __post_init__(self) -> None:
        if self.normalize not in NORMALIZATIONS:
            raise ConfigError("normalize", f"expected one of {NORMALIZATIONS}, got {self.normalize!r}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError("test_fraction", f"expected a number in (0, 1), got {self.test_fraction!r}")

    def read(
        self, paths: Mapping[str, Any], seed: int
    ) -> EmbeddingDataset | tuple[EmbeddingDataset, EmbeddingDataset]:
        """The whole dataset (split later) or ``(train, test)`` when it comes with its own test set."""
        raise NotImplementedError(f"{type(self).__name__}.read")

    def load(self, paths: Mapping[str, Any], seed: int) -> tuple[EmbeddingDataset, EmbeddingDataset]:
        """``(train, test)`` raw features (normalisation is fitted later, from the clients)."""
        ds = self.read(paths, seed)
        if isinstance(ds, tuple):
            return ds
        return train_test_split(ds, self.test_fraction, derive_seed(seed, "split"))
