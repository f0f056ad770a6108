"""GGEUR: pooled statistics, shapes, generation, multi-domain prototypes and the edge cases."""

from __future__ import annotations

import numpy as np
import pytest

from common.errors import ConfigError
from fedgeo.augment import GGEUR, ClientData
from fedgeo.ggeur import (
    ClassStats,
    aggregate_packed,
    aggregate_prototypes,
    aggregate_stats,
    augment_client,
    augment_from_prototypes,
    class_shapes,
    client_prototypes,
    client_stats,
    guide_mask,
    noise_factors,
    pack_sym,
    sample_around,
    unpack_sym,
)
from fedgeo.synthetic import make_synthetic


def _random_clients(rng: np.random.Generator, X: np.ndarray, K: int) -> list[np.ndarray]:
    """Random partition of the rows into K parts of random sizes (some may miss classes)."""
    owner = rng.integers(0, K, size=X.shape[0])
    return [np.flatnonzero(owner == k) for k in range(K)]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_aggregated_covariance_equals_union_covariance(seed: int) -> None:
    rng = np.random.default_rng(seed)
    C, d, n = 5, 12, 400
    # Means far from the origin: a naive E[xx^T] - mu mu^T would lose digits here.
    X = (rng.standard_normal((n, d)) * rng.uniform(0.1, 3, d) + 1e4).astype(np.float64)
    y = rng.integers(0, C, size=n)
    parts = _random_clients(rng, X, K=int(rng.integers(2, 9)))
    pooled = aggregate_stats(client_stats(X[p], y[p], C) for p in parts)
    for c in range(C):
        Xc = X[y == c]
        assert pooled.counts[c] == Xc.shape[0]
        np.testing.assert_allclose(pooled.means[c], Xc.mean(axis=0), rtol=0, atol=1e-9)
        np.testing.assert_allclose(pooled.covs[c], np.cov(Xc.T, bias=True), rtol=1e-9, atol=1e-9)


def test_aggregation_matches_paper_formula() -> None:
    rng = np.random.default_rng(5)
    X, y = rng.standard_normal((300, 6)), rng.integers(0, 3, 300)
    parts = _random_clients(rng, X, 4)
    stats = [client_stats(X[p], y[p], 3) for p in parts]
    pooled = aggregate_stats(stats)
    for c in range(3):
        n = np.array([s.counts[c] for s in stats], dtype=float)
        mu = sum(s.counts[c] * s.means[c] for s in stats) / n.sum()
        S = sum(
            s.counts[c] * s.covs[c] + s.counts[c] * np.outer(s.means[c] - mu, s.means[c] - mu) for s in stats
        )
        np.testing.assert_allclose(pooled.covs[c], S / n.sum(), atol=1e-12)


def test_generated_noise_covariance_approaches_global_shape() -> None:
    syn = make_synthetic(num_classes=2, dim=8, train_per_class=300, seed=3)
    shapes = class_shapes(client_stats(syn.train.features, syn.train.labels, 2))
    S = shapes.covariance(0)
    anchor = syn.train.features[:1]
    errors = []
    for m in (500, 50_000):
        gen = sample_around(
            anchor, np.array([m]), shapes.eigvals[0], shapes.eigvecs[0], "sqrt", np.random.default_rng(0)
        )
        errors.append(np.linalg.norm(np.cov(gen.T.astype(np.float64)) - S) / np.linalg.norm(S))
    assert errors[1] < 0.03
    assert errors[1] < errors[0]


def test_lambda_noise_scale_uses_eigenvalues_not_their_roots() -> None:
    vals = np.array([4.0, 1.0, 0.25])
    gen = sample_around(
        np.zeros((1, 3)), np.array([40_000]), vals, np.eye(3), "lambda", np.random.default_rng(1)
    )
    np.testing.assert_allclose(gen.var(axis=0), vals**2, rtol=0.05)
    gen = sample_around(
        np.zeros((1, 3)), np.array([40_000]), vals, np.eye(3), "sqrt", np.random.default_rng(1)
    )
    np.testing.assert_allclose(gen.var(axis=0), vals, rtol=0.05)
    with pytest.raises(ConfigError, match="noise_scale"):
        sample_around(np.zeros((1, 3)), np.array([1]), vals, np.eye(3), "square", np.random.default_rng(1))


def test_augment_counts_and_originals() -> None:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((30, 4)).astype(np.float32)
    y = np.array([0] * 20 + [1] * 7 + [2] * 3)
    shapes = noise_factors(client_stats(X, y, 4))
    Xa, ya = augment_client(X, y, shapes, np.random.default_rng(1), target_per_class=10)
    np.testing.assert_array_equal(
        np.bincount(ya, minlength=4), [20, 10, 10, 0]
    )  # 20 > target: kept, none new
    np.testing.assert_array_equal(Xa[:30], X)
    Xb, yb = augment_client(X, y, shapes, np.random.default_rng(1), target_per_class=10, keep_originals=False)
    np.testing.assert_array_equal(np.bincount(yb, minlength=4), [10, 10, 10, 0])
    _, yc = augment_client(
        X, y, shapes, np.random.default_rng(1), target_per_class=None, samples_per_original=2
    )
    np.testing.assert_array_equal(np.bincount(yc, minlength=4), [60, 21, 9, 0])
    with pytest.raises(ConfigError, match="exactly one"):
        augment_client(X, y, shapes, rng, target_per_class=10, samples_per_original=2)


def test_augment_is_deterministic_for_a_seed() -> None:
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((40, 5)).astype(np.float32), rng.integers(0, 3, 40)
    shapes = noise_factors(client_stats(X, y, 3))
    a = augment_client(X, y, shapes, np.random.default_rng(7), target_per_class=100)
    b = augment_client(X, y, shapes, np.random.default_rng(7), target_per_class=100)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_edge_cases_missing_class_single_sample_and_high_dimension() -> None:
    rng = np.random.default_rng(2)
    d = 50  # above every class's sample count
    X1 = rng.standard_normal((6, d)).astype(np.float32)
    y1 = np.array([0, 0, 0, 0, 1, 2])  # class 1 and 2: one sample each here
    X2 = rng.standard_normal((4, d)).astype(np.float32)
    y2 = np.array([0, 0, 1, 1])  # lacks class 2 and 3
    pooled = aggregate_stats([client_stats(X1, y1, 4), client_stats(X2, y2, 4)])
    assert pooled.counts.tolist() == [6, 3, 1, 0]
    assert np.all(np.isfinite(pooled.covs)) and np.all(pooled.covs[3] == 0)
    shapes = class_shapes(pooled)
    assert np.all(shapes.eigvals >= 0) and np.all(np.isfinite(shapes.eigvecs))
    assert np.count_nonzero(shapes.eigvals[0] > 1e-9) <= 5  # rank <= n - 1 with d = 50
    nf = noise_factors(pooled)
    Xa, ya = augment_client(X2, y2, nf, np.random.default_rng(0), target_per_class=20)
    assert np.all(np.isfinite(Xa))
    np.testing.assert_array_equal(np.bincount(ya, minlength=4), [20, 20, 0, 0])  # lacking classes: nothing
    # Class 2 has one sample in the whole federation: shape 0, so generated samples equal the anchor.
    Xb, yb = augment_client(X1, y1, nf, np.random.default_rng(0), target_per_class=5)
    np.testing.assert_array_equal(Xb[yb == 2], np.repeat(X1[5:6], 5, axis=0))
    # The generated spread of class 0 stays inside the span of its centred samples.
    Xc = np.concatenate([X1[y1 == 0], X2[y2 == 0]]).astype(np.float64)
    basis = np.linalg.svd(Xc - Xc.mean(0), full_matrices=False)[2]
    noise = Xa[ya == 0][2:] - X2[np.repeat([0, 1], 9)]
    resid = noise - (noise @ basis.T) @ basis
    assert np.abs(resid).max() < 1e-3 * np.abs(noise).max()


def test_negative_eigenvalues_are_clipped() -> None:
    S = np.diag([2.0, 1.0, -1e-3])
    stats = ClassStats(np.array([10]), np.zeros((1, 3)), S[None])
    shapes = class_shapes(stats)
    assert shapes.clipped == 1
    assert shapes.eigvals[0].tolist() == [2.0, 1.0, 0.0]


def test_prototypes_and_multi_domain_generation() -> None:
    syn = make_synthetic(num_classes=3, dim=6, num_domains=3, train_per_class=20, seed=4)
    tr = syn.train
    clients = [
        ClientData(tr.features[tr.domains == k], tr.labels[tr.domains == k], tr.domains[tr.domains == k])
        for k in range(3)
    ]
    protos = aggregate_prototypes([client_prototypes(c.features, c.labels, c.domains, 3, 3) for c in clients])
    for k in range(3):
        for c in range(3):
            rows = (tr.domains == k) & (tr.labels == c)
            np.testing.assert_allclose(protos.means[k, c], tr.features[rows].mean(0), atol=1e-5)
    nf = noise_factors(aggregate_stats(client_stats(c.features, c.labels, 3) for c in clients))
    Xp, yp = augment_from_prototypes(protos, [0], nf, 2000, np.random.default_rng(0))
    assert Xp.shape == (2 * 3 * 2000, 6)
    # Domain 0 is skipped; the first block is domain 1, class by class: class 2 is its third block.
    block = slice(2 * 2000, 3 * 2000)
    assert np.all(yp[block] == 2)
    np.testing.assert_allclose(Xp[block].mean(0), protos.means[1, 2], atol=0.25)
    out, _ = GGEUR(target_per_class=30, multi_domain=True, per_prototype=10).augment_all(
        clients, 3, 3, seed=0
    )
    for k, o in enumerate(out):
        assert o.labels.size == 3 * 30 + 2 * 3 * 10
        assert set(np.unique(o.domains)) == {-1, *range(3)}
        assert np.count_nonzero(o.domains == k) == 60  # originals only; other domains come from prototypes


def test_cholesky_factor_gives_the_pooled_covariance_and_lambda_the_squared_shape() -> None:
    rng = np.random.default_rng(3)
    X, y = rng.standard_normal((400, 6)) @ rng.standard_normal((6, 6)), rng.integers(0, 2, 400)
    stats = client_stats(X, y, 2)
    nf = noise_factors(stats, "sqrt")
    for c in range(2):
        F = nf.factors[c].astype(np.float64)
        np.testing.assert_allclose(F @ F.T, stats.covs[c], rtol=1e-5, atol=1e-5)
        lam = noise_factors(stats, "lambda").factors[c].astype(np.float64)
        w = np.linalg.eigvalsh(stats.covs[c])
        np.testing.assert_allclose(np.sort(np.linalg.eigvalsh(lam @ lam.T)), np.sort(w**2), rtol=1e-4)


def test_guide_clients_hold_80_percent_of_each_class() -> None:
    counts = np.array([[50, 0], [30, 10], [15, 10], [5, 80]])
    mask = guide_mask(counts, 0.8)
    assert mask[:, 0].tolist() == [True, True, False, False]  # 50 + 30 = 80 of 100
    assert mask[:, 1].tolist() == [False, False, False, True]  # 80 of 100
    rng = np.random.default_rng(0)
    Xs = [rng.standard_normal((int(n), 3)) + k for k, n in enumerate(counts[:, 0])]
    stats = [client_stats(X, np.zeros(len(X), dtype=int), 1) for X in Xs]
    guide = aggregate_stats(stats, cov_clients="guide")
    np.testing.assert_allclose(guide.covs[0], np.cov(np.concatenate(Xs[:2]).T, bias=True), atol=1e-10)
    with pytest.raises(ConfigError, match="cov_clients"):
        aggregate_stats(stats, cov_clients="largest")


def test_multi_domain_default_comes_from_the_partition() -> None:
    assert GGEUR().resolve("domain").multi_domain is True and GGEUR().resolve("domain").label == "ggeur+md"
    assert (
        GGEUR().resolve("dirichlet").multi_domain is False and GGEUR().resolve("dirichlet").label == "ggeur"
    )
    assert GGEUR(multi_domain=True).resolve("dirichlet").multi_domain is True


def _reference_pool(stats: list) -> tuple[np.ndarray, np.ndarray]:
    """The per-class merge loop the packed accumulator replaced (means, symmetrised covariances)."""
    C, d = stats[0].means.shape
    counts, means, m2 = np.zeros(C, np.int64), np.zeros((C, d)), np.zeros((C, d, d))
    for s in stats:
        for c in np.flatnonzero(s.counts):
            na, nb = int(counts[c]), int(s.counts[c])
            n = na + nb
            delta = s.means[c] - means[c]
            means[c] += delta * (nb / n)
            m2[c] += nb * s.covs[c] + np.outer(delta, delta) * (na * nb / n)
            counts[c] = n
    covs = np.zeros_like(m2)
    for c in np.flatnonzero(counts):
        S = m2[c] / counts[c]
        covs[c] = (S + S.T) / 2
    return means, covs


def test_packed_aggregation_is_bit_identical_to_the_per_class_merge() -> None:
    rng = np.random.default_rng(3)
    C, d = 5, 7
    stats = []
    for k in range(4):
        y = rng.integers(0, C - (k % 2), 40)  # odd clients lack the last class: the subset path
        stats.append(client_stats(rng.standard_normal((40, d)) + 100.0 + y[:, None], y, C))
    packed = [(s.counts, s.means, pack_sym(s.covs)) for s in stats]
    np.testing.assert_array_equal(unpack_sym(packed[0][2], d), stats[0].covs)
    pooled = aggregate_packed(packed)
    means, covs = _reference_pool(stats)
    np.testing.assert_array_equal(pooled.means, means)
    np.testing.assert_array_equal(pooled.covs, covs)
    np.testing.assert_array_equal(aggregate_stats(stats).covs, covs)


def test_rank_deficient_covariances_get_jitter_and_still_reproduce_the_shape() -> None:
    rng = np.random.default_rng(4)
    X = rng.standard_normal((6, 10))  # 6 samples in 10 dims: rank 5
    stats = client_stats(X, np.zeros(6, np.int64), 1)
    nf = noise_factors(stats, "sqrt")
    assert nf.clipped == 1
    F = nf.factors[0].astype(np.float64)
    np.testing.assert_allclose(F @ F.T, stats.covs[0], atol=1e-5)
    np.testing.assert_array_equal(np.triu(F, 1), 0)
