"""Image datasets for the feature-extraction path, read from their usual on-disk layouts.

- CIFAR-10 / CIFAR-100: the python pickle release (``cifar-10-batches-py/`` with ``data_batch_1..5`` and
  ``test_batch``; ``cifar-100-python/`` with ``train`` and ``test``, fine labels). Own train/test split.
- Tiny-ImageNet: ``tiny-imagenet-200/`` with ``wnids.txt``, ``train/<wnid>/images/*.JPEG`` and
  ``val/images`` + ``val/val_annotations.txt`` (used as the test split).
- Image folders (PACS, Office-Home, Office-Caltech at full resolution): ``root/<domain>/<class>/<image>``;
  domains and classes sorted by name, classes the union over domains.

They return ``fedgeo.data.ImageDataset`` (CIFAR as arrays, the others as file paths, read lazily).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from common.errors import InputError
from fedgeo.data import ImageDataset

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def _need_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise InputError(f"{what}: folder {path} not found")
    return path


def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise InputError(f"CIFAR file {path} not found")
    with path.open("rb") as fh:
        return pickle.load(fh, encoding="latin1")  # noqa: S301 - the official CIFAR release format


def cifar_images(root: str | os.PathLike[str], which: str = "cifar10") -> ImageDataset:
    """CIFAR-10 (``which="cifar10"``) or CIFAR-100 (``"cifar100"``, fine labels) from the python release."""
    root = Path(root)
    if which == "cifar10":
        base = _need_dir(root / "cifar-10-batches-py", "CIFAR-10")
        files = [base / f"data_batch_{i}" for i in range(1, 6)] + [base / "test_batch"]
        label_key, names = "labels", _unpickle(base / "batches.meta")["label_names"]
    elif which == "cifar100":
        base = _need_dir(root / "cifar-100-python", "CIFAR-100")
        files = [base / "train", base / "test"]
        label_key, names = "fine_labels", _unpickle(base / "meta")["fine_label_names"]
    else:
        raise InputError(f"cifar_images: which must be cifar10 or cifar100, got {which!r}")
    imgs, labels, split = [], [], []
    for f in files:
        batch = _unpickle(f)
        imgs.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(batch[label_key], dtype=np.int64))
        split.append(np.full(len(batch[label_key]), int("test" in f.name), dtype=np.int8))
    y = np.concatenate(labels)
    return ImageDataset(
        y,
        np.zeros_like(y),
        (which,),
        tuple(names),
        which,
        images=np.concatenate(imgs),
        split=np.concatenate(split),
    )


def tiny_imagenet_images(root: str | os.PathLike[str]) -> ImageDataset:
    """Tiny-ImageNet-200: train images (split 0) and the labelled validation images (split 1), as paths."""
    base = _need_dir(Path(root) / "tiny-imagenet-200", "Tiny-ImageNet")
    wnids = (base / "wnids.txt").read_text().split()
    index = {w: i for i, w in enumerate(wnids)}
    paths, labels, split = [], [], []
    for w in wnids:
        for p in sorted((base / "train" / w / "images").glob("*.JPEG")):
            paths.append(str(p))
            labels.append(index[w])
            split.append(0)
    ann = base / "val" / "val_annotations.txt"
    if not ann.is_file():
        raise InputError(f"Tiny-ImageNet: {ann} not found")
    for line in ann.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 2 and parts[1] in index:
            paths.append(str(base / "val" / "images" / parts[0]))
            labels.append(index[parts[1]])
            split.append(1)
    y = np.asarray(labels, dtype=np.int64)
    return ImageDataset(
        y,
        np.zeros_like(y),
        ("tiny_imagenet",),
        tuple(wnids),
        "tiny_imagenet",
        paths=tuple(paths),
        split=np.asarray(split, dtype=np.int8),
    )


def image_folder(
    root: str | os.PathLike[str], name: str, domains: Sequence[str] | None = None
) -> ImageDataset:
    """A ``root/<domain>/<class>/<image>`` tree (PACS, Office-Home, ...), as paths; no own split."""
    base = _need_dir(Path(root), name)
    all_domains = sorted(p.name for p in base.iterdir() if p.is_dir())
    chosen = list(domains) if domains is not None else all_domains
    missing = [d for d in chosen if d not in all_domains]
    if missing or not chosen:
        raise InputError(f"{name}: domains {missing or chosen} not found under {base} (has {all_domains})")
    classes = sorted({c.name for d in chosen for c in (base / d).iterdir() if c.is_dir()})
    cindex = {c: i for i, c in enumerate(classes)}
    paths, labels, doms = [], [], []
    for di, d in enumerate(chosen):
        for cdir in sorted(p for p in (base / d).iterdir() if p.is_dir()):
            for p in sorted(cdir.iterdir()):
                if p.suffix.lower() in IMAGE_SUFFIXES:
                    paths.append(str(p))
                    labels.append(cindex[cdir.name])
                    doms.append(di)
    if not paths:
        raise InputError(f"{name}: no images ({', '.join(IMAGE_SUFFIXES)}) under {base}")
    return ImageDataset(
        np.asarray(labels, dtype=np.int64),
        np.asarray(doms, dtype=np.int64),
        tuple(chosen),
        tuple(classes),
        name,
        paths=tuple(paths),
    )
