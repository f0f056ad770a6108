"""open_clip feature extraction with a randomly initialised model (no weights, no network).

Skips where open_clip cannot be imported (in the project's torch 2.13.0 CPU environment PyPI's torchvision
does not load); runs in a torch 2.14.1 + torchvision 0.29.1 environment, see docs/ggeur.md.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedgeo.clip_features import clip_embedding_dataset, open_clip_available
from fedgeo.data import ImageDataset

OK, WHY = open_clip_available()
pytestmark = pytest.mark.skipif(not OK, reason=WHY)


def _images(n: int = 12) -> ImageDataset:
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(n, dtype=np.int64) % 3
    return ImageDataset(labels, np.zeros(n, dtype=np.int64), ("d0",), ("a", "b", "c"), "noise", images=imgs)


def test_random_open_clip_features_are_cached_and_reused(tmp_path, monkeypatch) -> None:
    images = _images()
    kw = dict(cache_dir=tmp_path, model_name="ViT-S-32", pretrained=None, batch_size=5, image_size=64, seed=3)
    ds = clip_embedding_dataset(images, **kw)
    assert ds.features.dtype == np.float32 and ds.features.shape[0] == 12 and ds.features.shape[1] > 0
    assert np.all(np.isfinite(ds.features))
    assert not np.allclose(ds.features[0], ds.features[1])
    np.testing.assert_array_equal(ds.labels, images.labels)
    assert len(list(tmp_path.glob("*.npz"))) == 1

    import fedgeo.clip_features as cf

    def no_model(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(cf, "load_open_clip", no_model)
    again = clip_embedding_dataset(images, **kw)
    np.testing.assert_array_equal(again.features, ds.features)
    monkeypatch.undo()
    # Same seed, fresh model (no cache): identical features.
    fresh = clip_embedding_dataset(images, **{**kw, "cache_dir": tmp_path / "other"})
    np.testing.assert_allclose(fresh.features, ds.features, rtol=1e-5, atol=1e-6)
