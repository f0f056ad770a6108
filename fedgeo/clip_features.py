"""Frozen-backbone image features with open_clip, cached to ``.npz`` and reused (optional ``clip`` extra).

``clip_embedding_dataset(images, ...)`` runs the image encoder of an open_clip model over an
``ImageDataset`` (``encode_image``, no normalisation, as in the official GGEUR code: CLIP ViT-B/32 gives
512-d features) and caches the result under ``cache_dir``; the cache file name holds a hash of the model,
the weights tag, the image size and the images themselves, so a changed input never reuses a stale cache.
``pretrained=None`` builds a randomly initialised model (seeded), which needs no download: the tests use it.

open_clip imports torchvision, and PyPI's torchvision does not load beside the project's CPU torch 2.13.0
build; run this path in an environment with torch 2.14.1 and torchvision 0.29.1 (see docs/ggeur.md).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.atomic import atomic_savez
from common.config import schema
from common.errors import ConfigError, InputError
from common.log import get_logger
from common.progress import track
from common.seeding import derive_seed
from fedgeo.data import DatasetSource, EmbeddingDataset, ImageDataset, required_path
from fedgeo.datasets import digits_image_dataset, load_office_caltech_images
from fedgeo.image_sources import cifar_images, image_folder, tiny_imagenet_images

CACHE_VERSION = 1


def open_clip_available() -> tuple[bool, str]:
    """``(True, "")`` when ``import open_clip`` works, else ``(False, the reason)``."""
    try:
        import open_clip  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure (missing, broken torchvision) is the reason
        return False, f"open_clip cannot be imported: {type(exc).__name__}: {exc}"
    return True, ""


def load_open_clip(
    model_name: str = "ViT-B-32",
    pretrained: str | None = "openai",
    device: str = "cpu",
    image_size: int | None = None,
    seed: int = 0,
) -> tuple[Any, Any]:
    """An open_clip model in eval mode and its image preprocessing.

    Args:
        model_name: an open_clip architecture (``open_clip.list_models()``).
        pretrained: a weights tag or a local checkpoint path; ``None`` for random weights drawn from ``seed``.
        image_size: force the input size (smaller is faster; changes the features).
    """
    ok, why = open_clip_available()
    if not ok:
        raise InputError(
            why + " (install the 'clip' extra in a torch 2.14.1 + torchvision 0.29.1 environment)"
        )
    import open_clip
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=pretrained, device=device, force_image_size=image_size
            )
        except RuntimeError as exc:
            raise InputError(f"open_clip model {model_name!r} with weights {pretrained!r}: {exc}") from exc
    model.eval()
    return model, preprocess


def _pil_images(images: ImageDataset, rows: np.ndarray) -> list[Any]:
    from PIL import Image

    if images.images is not None:
        return [Image.fromarray(images.images[i]) for i in rows]
    out = []
    for i in rows:
        path = images.paths[i]  # type: ignore[index]
        try:
            with Image.open(path) as im:
                out.append(im.convert("RGB"))
        except OSError as exc:
            raise InputError(f"image {path}: unreadable ({exc})") from exc
    return out


def extract_features(
    images: ImageDataset, model: Any, preprocess: Any, batch_size: int = 64, device: str = "cpu"
) -> np.ndarray:
    """``float32 [n, D]``: ``model.encode_image`` of every image, in dataset order, without normalisation."""
    import torch

    n = len(images)
    chunks = []
    starts = range(0, n, batch_size)
    with torch.no_grad():
        for s in track(starts, total=len(starts), description=f"open_clip features of {images.name}"):
            batch = torch.stack(
                [preprocess(im) for im in _pil_images(images, np.arange(s, min(s + batch_size, n)))]
            )
            chunks.append(model.encode_image(batch.to(device)).float().cpu().numpy())
    return np.concatenate(chunks).astype(np.float32)


def images_fingerprint(images: ImageDataset) -> str:
    """sha256 (16 hex) of the images (pixels, or paths with file sizes), labels and domains."""
    h = hashlib.sha256()
    if images.images is not None:
        h.update(np.ascontiguousarray(images.images).tobytes())
    else:
        for p in images.paths or ():
            h.update(p.encode())
            h.update(str(os.path.getsize(p) if os.path.exists(p) else -1).encode())
    h.update(images.labels.tobytes())
    h.update(images.domains.tobytes())
    return h.hexdigest()[:16]


def cache_path(
    images: ImageDataset,
    cache_dir: str | os.PathLike[str],
    model_name: str,
    pretrained: str | None,
    image_size: int | None,
    seed: int,
) -> Path:
    """Where the features of ``images`` under this model are cached."""
    key = json.dumps(
        [
            CACHE_VERSION,
            model_name,
            pretrained,
            image_size,
            seed if pretrained is None else None,
            images_fingerprint(images),
        ]
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    safe = f"{images.name}-{model_name}-{pretrained or 'random'}".replace("/", "_")
    return Path(cache_dir) / f"{safe}-{digest}.npz"


def clip_embedding_dataset(
    images: ImageDataset,
    cache_dir: str | os.PathLike[str],
    model_name: str = "ViT-B-32",
    pretrained: str | None = "openai",
    batch_size: int = 64,
    device: str = "cpu",
    image_size: int | None = None,
    seed: int = 0,
) -> EmbeddingDataset:
    """The open_clip features of ``images`` as an ``EmbeddingDataset``, computed once and then read from
    the ``.npz`` cache (written atomically). Labels, domains, names and split are carried over."""
    path = cache_path(images, cache_dir, model_name, pretrained, image_size, seed)
    log = get_logger("fedgeo.clip")
    if path.is_file():
        log.info(f"open_clip features: reusing cache {path}")
        with np.load(path) as z:
            feats = z["features"]
    else:
        model, preprocess = load_open_clip(model_name, pretrained, device, image_size, seed)
        feats = extract_features(images, model, preprocess, batch_size, device)
        atomic_savez(path, features=feats, labels=images.labels, domains=images.domains)
        log.info(f"open_clip features: {feats.shape} written to {path}")
    if feats.shape[0] != len(images):
        raise InputError(f"{path}: cached features have {feats.shape[0]} rows, the dataset {len(images)}")
    return EmbeddingDataset(
        feats.astype(np.float32),
        images.labels,
        images.domains,
        images.domain_names,
        images.class_names,
        name=f"{images.name}:{model_name}",
        split=images.split,
    )


CLIP_SOURCES = ("office_caltech_images", "digits", "cifar10", "cifar100", "tiny_imagenet", "image_folder")


@schema("dataset", "clip")
@dataclass(frozen=True)
class ClipSource(DatasetSource):
    """``dataset=clip``: open_clip features of an image ``source``, cached under ``paths.feature_cache``.

    Attributes:
        source: one of ``CLIP_SOURCES``; ``root`` is the folder of cifar10/cifar100/tiny_imagenet/image_folder.
        folder_name: the dataset's name for ``source=image_folder``. grid: image size for ``source=digits``.
        model, pretrained, image_size, batch_size, device: the open_clip encoder (``pretrained=None``: random).
    """

    name: str = "clip"
    source: str = "office_caltech_images"
    root: str | None = None
    folder_name: str = "image_folder"
    domains: list[str] | None = None
    grid: int = 32
    model: str = "ViT-B-32"
    pretrained: str | None = "openai"
    image_size: int | None = None
    batch_size: int = 64
    device: str = "cpu"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.source not in CLIP_SOURCES:
            raise ConfigError("source", f"expected one of {CLIP_SOURCES}, got {self.source!r}")
        if self.source not in ("office_caltech_images", "digits") and not self.root:
            raise ConfigError("root", f"source {self.source} needs the folder that holds its files")

    def images(self, data_root: str) -> ImageDataset:
        if self.source == "office_caltech_images":
            return load_office_caltech_images(data_root, self.domains)
        if self.source == "digits":
            return digits_image_dataset(data_root, self.grid, self.domains)
        if self.source in ("cifar10", "cifar100"):
            return cifar_images(str(self.root), self.source)
        if self.source == "tiny_imagenet":
            return tiny_imagenet_images(str(self.root))
        return image_folder(str(self.root), self.folder_name, self.domains)

    def read(self, paths: Mapping[str, Any], seed: int) -> EmbeddingDataset:
        data_root = str(paths.get("fl_data") or "")
        return clip_embedding_dataset(
            self.images(data_root),
            cache_dir=required_path(paths, "feature_cache"),
            model_name=self.model,
            pretrained=self.pretrained,
            batch_size=self.batch_size,
            device=self.device,
            image_size=self.image_size,
            seed=derive_seed(seed, "clip-init"),
        )
