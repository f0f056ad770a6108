"""Partitions: disjoint, complete, reproducible, and skewed the way they say."""

from __future__ import annotations

import numpy as np
import pytest

from common.errors import ConfigError, InputError
from fedgeo.partitions import Partition, dirichlet_label_skew, domain_label_dirichlet, domain_skew

RNG = np.random.default_rng(0)
LABELS = RNG.integers(0, 10, size=3000)
DOMAINS = RNG.integers(0, 4, size=3000)


def _disjoint_and_complete(p: Partition, n: int) -> None:
    allidx = np.concatenate(p.client_indices)
    assert np.unique(allidx).size == allidx.size == n


def test_dirichlet_one_per_class_disjoint_reproducible() -> None:
    p = dirichlet_label_skew(LABELS, 10, 0.1, seed=3, num_classes=10)
    _disjoint_and_complete(p, LABELS.size)
    assert p.counts.shape == (10, 10) and np.all(p.counts >= 1)
    for k, idx in enumerate(p.client_indices):
        np.testing.assert_array_equal(p.counts[k], np.bincount(LABELS[idx], minlength=10))
    again = dirichlet_label_skew(LABELS, 10, 0.1, seed=3, num_classes=10)
    assert again.hash == p.hash
    assert dirichlet_label_skew(LABELS, 10, 0.1, seed=4, num_classes=10).hash != p.hash


def test_smaller_beta_gives_stronger_label_skew() -> None:
    def top_share(beta: float) -> float:
        p = dirichlet_label_skew(LABELS, 10, beta, seed=1, one_per_class=False)
        return float(np.mean(p.counts.max(axis=1) / np.maximum(p.counts.sum(axis=1), 1)))

    assert top_share(0.01) > top_share(0.5) > top_share(100.0)
    assert top_share(100.0) < 0.2  # near uniform over 10 classes


def test_domain_skew_one_domain_per_client_with_fraction() -> None:
    p = domain_skew(LABELS, DOMAINS, seed=0, fraction=0.1, clients_per_domain=2)
    assert p.num_clients == 8
    allidx = np.concatenate(p.client_indices)
    assert np.unique(allidx).size == allidx.size
    for k, idx in enumerate(p.client_indices):
        dom = k // 2
        assert p.client_domains[k] == dom and np.all(DOMAINS[idx] == dom)
        assert idx.size == round(0.1 * np.count_nonzero(DOMAINS == dom))
    with pytest.raises(ConfigError, match="partition.fraction"):
        domain_skew(LABELS, DOMAINS, seed=0, fraction=0.6, clients_per_domain=2)


def test_domain_label_dirichlet_mixes_domains_and_classes() -> None:
    p = domain_label_dirichlet(LABELS, DOMAINS, 6, 0.1, seed=2, num_classes=10)
    _disjoint_and_complete(p, LABELS.size)
    assert p.method == "domain_dirichlet"
    cells = DOMAINS * 10 + LABELS
    # Every (domain, class) cell is spread by its own Dirichlet draw: most cells are concentrated.
    shares = [
        np.bincount(
            np.concatenate(
                [np.full(np.count_nonzero(cells[i] == c), k) for k, i in enumerate(p.client_indices)]
            ),
            minlength=6,
        ).max()
        / np.count_nonzero(cells == c)
        for c in range(40)
    ]
    assert np.median(shares) > 0.6


def test_partition_save_load_roundtrip(tmp_path) -> None:
    p = dirichlet_label_skew(LABELS, 5, 0.5, seed=0)
    p.save(tmp_path / "p.npz", tmp_path / "p.json")
    q = Partition.load(tmp_path / "p.npz")
    assert q.hash == p.hash and np.array_equal(q.counts, p.counts)
    import json

    summary = json.loads((tmp_path / "p.json").read_text())
    assert summary["hash"] == p.hash and summary["counts"] == p.counts.tolist()


def test_partition_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match="partition.beta"):
        dirichlet_label_skew(LABELS, 5, 0.0, seed=0)
    with pytest.raises(ConfigError, match="partition.clients"):
        dirichlet_label_skew(LABELS, 0, 0.5, seed=0)
    with pytest.raises(InputError, match="one_per_class"):
        dirichlet_label_skew(np.array([0, 0, 1]), 2, 0.5, seed=0)
