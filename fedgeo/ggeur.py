"""GGEUR (Dai et al., CVPR 2025): class statistics, pooled covariance, class shapes, generation.

Notation: C classes, d feature dimensions, K clients, D domains. The steps:

1. ``client_stats``: per class, count ``n_ki``, mean ``mu_ki`` and covariance ``S_ki`` (divided by ``n_ki``).
2. ``aggregate_stats``: ``N_i = sum_k n_ki``, ``mu_i = sum_k n_ki mu_ki / N_i`` and the pooled covariance
   ``S_i = (sum_k n_ki S_ki + sum_k n_ki (mu_ki - mu_i)(mu_ki - mu_i)^T) / N_i``, which is exactly the
   covariance of the union of all clients' samples of class i. It is computed in float64 by pairwise
   merging (Chan et al.: ``M = M_a + M_b + delta delta^T n_a n_b / n``), which never subtracts large
   second moments, so it stays accurate when the means are far from the origin.
3. ``class_shapes``: eigendecomposition ``S_i = sum_m lam_m xi_m xi_m^T``; negative eigenvalues (round-off)
   are clipped to 0. ``noise_factors`` gives what generation needs: for ``sqrt`` one Cholesky factor per
   class (``L L^T = S_i``, the same distribution as ``V sqrt(lam)``, about 10x cheaper than ``eigh``).
   ``aggregate_stats(cov_clients="guide")`` pools each class over its largest clients holding >= 80%
   of it only, as the official code does.
4. ``augment_client``: around each local sample ``x`` of class i, ``x_new = x + sum_m eps_m s(lam_m) xi_m``
   with ``eps_m ~ N(0, 1)``. ``noise_scale="sqrt"`` (default, the official code: ``x_new ~ N(x, S_i)``, so
   the noise has exactly the global covariance) or ``"lambda"`` (``s(lam) = lam`` as the paper writes;
   the noise then has covariance ``sum lam^2 xi xi^T``, which is not scale-invariant).
5. Multi-domain: ``client_prototypes`` / ``aggregate_prototypes`` give the class means per domain;
   ``augment_from_prototypes`` draws samples around the other domains' prototypes with the global shape.

Edge cases (none of them produces NaN or inf):

- A class a client lacks: it contributes nothing to the statistics; ``augment_client`` generates nothing for
  it (there is no local sample to expand); the prototype step can still give that client samples of it.
- A class with one sample on a client: its local covariance is 0, its mean enters the pooled covariance
  through the between-client term. A class with one sample in the whole federation has shape 0: the
  generated samples equal their anchor.
- A class absent everywhere: count 0, mean 0, covariance 0.
- ``d`` above the sample count: the pooled covariance has rank below ``d``; its zero (and clipped)
  eigenvalues give no noise, so samples are drawn in the span of the observed spread.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.linalg import lapack

from common.errors import ConfigError, InputError

NOISE_SCALES = ("sqrt", "lambda")
COV_CLIENTS = ("all", "guide")
# Eigen-directions with lam <= _RANK_TOL * max(lam) are numerical zeros and get no noise.
_RANK_TOL = 1e-12


@dataclass(frozen=True)
class ClassStats:
    """Per-class statistics.

    Attributes:
        counts: ``int64 [C]``.
        means: ``float64 [C, d]`` (zero rows where the count is 0).
        covs: ``float64 [C, d, d]``, population covariances (divided by the count; zero where count < 2).
    """

    counts: np.ndarray
    means: np.ndarray
    covs: np.ndarray

    @property
    def num_classes(self) -> int:
        return int(self.counts.shape[0])

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])


def _check_xy(X: np.ndarray, y: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X)
    y = np.asarray(y)
    if X.ndim != 2 or y.shape != (X.shape[0],):
        raise InputError(f"features must be [n, d] and labels [n]; got {X.shape} and {y.shape}")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise InputError(f"labels must lie in 0..{num_classes - 1}, got {y.min()}..{y.max()}")
    if not np.all(np.isfinite(X)):
        raise InputError("features hold NaN or inf")
    return X, y.astype(np.int64)


def client_stats(X: np.ndarray, y: np.ndarray, num_classes: int) -> ClassStats:
    """Step 1 on one client: per-class count, mean and covariance (divided by n), in float64.

    Args:
        X: ``[n, d]`` features. y: ``[n]`` labels in ``0..num_classes-1``.
    """
    X, y = _check_xy(X, y, num_classes)
    d = X.shape[1]
    counts = np.bincount(y, minlength=num_classes).astype(np.int64)
    means = np.zeros((num_classes, d))
    covs = np.zeros((num_classes, d, d))
    for c in np.flatnonzero(counts):
        Xc = X[y == c].astype(np.float64)
        mu = Xc.mean(axis=0)
        Z = Xc - mu
        means[c] = mu
        covs[c] = Z.T @ Z / counts[c]
    return ClassStats(counts, means, covs)


def _row_offsets(d: int) -> np.ndarray:
    """``int [d + 1]``: where row ``i`` of a packed upper triangle starts (``d - i`` entries each)."""
    return np.concatenate([[0], np.cumsum(np.arange(d, 0, -1))])


def pack_sym(covs: np.ndarray) -> np.ndarray:
    """``[C, d, d]`` symmetric matrices as their upper triangles ``[C, d (d + 1) / 2]`` (row by row).

    Row slices, not a fancy-index gather: the d copies are contiguous and 5-10x faster at d = 512.
    """
    C, d = covs.shape[0], covs.shape[-1]
    off = _row_offsets(d)
    out = np.empty((C, off[-1]), dtype=covs.dtype)
    for i in range(d):
        out[:, off[i] : off[i + 1]] = covs[:, i, i:]
    return out


def unpack_sym(packed: np.ndarray, d: int) -> np.ndarray:
    """Inverse of ``pack_sym``: ``[C, d (d + 1) / 2]`` to symmetric ``[C, d, d]`` (exact copies)."""
    off = _row_offsets(d)
    out = np.empty((packed.shape[0], d, d), dtype=packed.dtype)
    for i in range(d):
        row = packed[:, off[i] : off[i + 1]]
        out[:, i, i:] = row
        out[:, i:, i] = row
    return out


class StatsAccumulator:
    """Step 2, streaming: merges clients' statistics one at a time into the pooled statistics.

    Holds the packed sums of squared deviations ``float64 [C, d (d + 1) / 2]`` once (K clients need no
    K-fold memory); every merge is one vectorised step over the classes the client holds.
    """

    def __init__(self, num_classes: int, dim: int) -> None:
        self.counts = np.zeros(num_classes, dtype=np.int64)
        self.means = np.zeros((num_classes, dim))
        self._m2 = np.zeros((num_classes, dim * (dim + 1) // 2))  # packed n * S
        self._off = _row_offsets(dim)

    def add(self, stats: ClassStats) -> None:
        """Merge one client's statistics (same C and d)."""
        self.add_packed(stats.counts, stats.means, pack_sym(stats.covs))

    def add_packed(self, counts: np.ndarray, means: np.ndarray, packed_covs: np.ndarray) -> None:
        """Merge one client's ``counts [C]``, ``means [C, d]`` and ``pack_sym`` covariances ``[C, P]``."""
        if counts.shape != self.counts.shape or means.shape != self.means.shape:
            raise InputError(
                f"client statistics have {counts.shape[0]} classes x {means.shape[-1]} dims, "
                f"expected {self.counts.size} x {self.means.shape[1]}"
            )
        cls = np.flatnonzero(counts)
        sel = slice(None) if cls.size == counts.size else cls  # a view when the client holds every class
        na, nb = self.counts[sel], np.asarray(counts, dtype=np.int64)[sel]
        n = na + nb
        delta = means[sel] - self.means[sel]
        self.means[sel] += delta * (nb / n)[:, None]
        # m2 += nb S_k + delta delta^T na nb / n, in that order (the same rounding as one matrix at a time),
        # one packed row at a time: the temporaries stay in cache and m2 and the upload are read once.
        nbf, w = nb[:, None].astype(np.float64), ((na * nb) / n)[:, None]
        off = self._off
        for i in range(off.size - 1):
            row = slice(off[i], off[i + 1])
            term = np.multiply(packed_covs[sel, row], nbf)
            outer = np.multiply(delta[:, i : i + 1], delta[:, i:])
            outer *= w
            term += outer
            self._m2[sel, row] += term
        self.counts[sel] = n

    def result(self) -> ClassStats:
        """The pooled statistics: counts ``N_i``, means ``mu_i``, covariances ``S_i`` (symmetric)."""
        live = self.counts > 0
        S = np.where(live[:, None], self._m2 / np.maximum(self.counts, 1)[:, None], 0.0)
        return ClassStats(self.counts.copy(), self.means.copy(), unpack_sym(S, self.means.shape[1]))


def guide_mask(counts: np.ndarray, fraction: float = 0.8) -> np.ndarray:
    """``bool [K, C]``: for every class, the largest clients that together hold ``>= fraction`` of it.

    The official GGEUR code builds each class's covariance from these clients only (``cov_clients=guide``).
    Ties keep the lower client index first. ``counts`` is ``int [K, C]``.
    """
    counts = np.asarray(counts)
    mask = np.zeros(counts.shape, dtype=bool)
    for c in range(counts.shape[1]):
        order = np.argsort(-counts[:, c], kind="stable")
        cum = np.cumsum(counts[order, c])
        need = fraction * cum[-1]
        take = int(np.searchsorted(cum, need - 1e-9 * max(cum[-1], 1)) + 1) if cum[-1] > 0 else 0
        mask[order[:take], c] = True
    return mask & (counts > 0)


def restrict(stats: ClassStats, keep: np.ndarray) -> ClassStats:
    """``stats`` with the classes where ``keep`` (``bool [C]``) is false emptied (count, mean and
    covariance 0), as if the client held none of them."""
    keep = np.asarray(keep, dtype=bool)
    return ClassStats(
        np.where(keep, stats.counts, 0), stats.means * keep[:, None], stats.covs * keep[:, None, None]
    )


def withhold_small(
    stats: ClassStats, protos: Prototypes | None, min_count: int
) -> tuple[ClassStats, Prototypes | None, int, int]:
    """A client's upload with every class of fewer than ``min_count`` local samples withheld (count, mean
    and covariance 0), and every (domain, class) prototype of fewer than ``min_count`` samples too.

    With ``n`` samples of a class, the mean and covariance are ``n`` moments of those very samples: one
    sample is sent exactly, two are recovered exactly from mean and covariance. The floor keeps such
    classes on the client (it still augments them with the global shape that others' statistics give).

    Returns:
        ``(stats, prototypes, classes withheld, prototype cells withheld)``.
    """
    small = (stats.counts > 0) & (stats.counts < min_count)
    stats = restrict(stats, ~small)
    if protos is None:
        return stats, None, int(small.sum()), 0
    cut = (protos.counts > 0) & (protos.counts < min_count)
    protos = Prototypes(np.where(cut, 0, protos.counts), protos.means * ~cut[..., None])
    return stats, protos, int(small.sum()), int(cut.sum())


def aggregate_stats(
    stats: Iterable[ClassStats], cov_clients: str = "all", guide_fraction: float = 0.8
) -> ClassStats:
    """Step 2: the server's pooled per-class statistics from every client's ``ClassStats``.

    ``cov_clients="guide"`` pools each class over ``guide_mask`` clients only (the official code's rule);
    ``"all"`` pools every client (the exact covariance of the union).
    """
    packed = ((s.counts, s.means, pack_sym(s.covs)) for s in stats)
    return aggregate_packed(packed, cov_clients, guide_fraction)


PackedStats = tuple[np.ndarray, np.ndarray, np.ndarray]  # counts [C], means [C, d], pack_sym(covs) [C, P]


def aggregate_packed(
    stats: Iterable[PackedStats], cov_clients: str = "all", guide_fraction: float = 0.8
) -> ClassStats:
    """``aggregate_stats`` over packed uploads ``(counts, means, packed covs)``, as clients send them:
    the covariances are merged packed and unpacked once, for the pooled result only."""
    if cov_clients not in COV_CLIENTS:
        raise ConfigError("augment.cov_clients", f"expected one of {COV_CLIENTS}, got {cov_clients!r}")
    if cov_clients == "guide":
        stats = list(stats)
        mask = guide_mask(np.stack([s[0] for s in stats]), guide_fraction)
        stats = [(np.where(m, c, 0), mu, P) for (c, mu, P), m in zip(stats, mask, strict=True)]
    acc: StatsAccumulator | None = None
    for counts, means, covs in stats:
        if acc is None:
            acc = StatsAccumulator(counts.shape[0], means.shape[1])
        acc.add_packed(counts, means, covs)
    if acc is None:
        raise InputError("aggregate_stats needs the statistics of at least one client")
    return acc.result()


@dataclass(frozen=True)
class ClassShapes:
    """Step 3: the geometric shape of every class.

    Attributes:
        eigvals: ``float64 [C, d]``, descending, all >= 0 (negatives clipped).
        eigvecs: ``float64 [C, d, d]``; column ``m`` of ``eigvecs[c]`` is ``xi_m`` of class c.
        counts: ``int64 [C]``, the global sample count ``N_i`` behind each shape.
        clipped: how many negative eigenvalues were set to 0, over all classes.
    """

    eigvals: np.ndarray
    eigvecs: np.ndarray
    counts: np.ndarray
    clipped: int = 0

    def covariance(self, c: int) -> np.ndarray:
        """``[d, d]``, the shape of class c as a covariance: ``V diag(lam) V^T``."""
        V = self.eigvecs[c]
        return (V * self.eigvals[c]) @ V.T


def class_shapes(stats: ClassStats) -> ClassShapes:
    """Step 3: eigendecomposition of each pooled covariance, negative eigenvalues clipped to 0."""
    C, d = stats.num_classes, stats.dim
    vals = np.zeros((C, d))
    vecs = np.broadcast_to(np.eye(d), (C, d, d)).copy()
    live = np.flatnonzero(stats.counts >= 2)
    if live.size == 0:
        return ClassShapes(vals, vecs, stats.counts.copy(), 0)
    w, V = np.linalg.eigh(stats.covs[live])  # one batched LAPACK call
    clipped = int(np.sum(w < 0))
    vals[live] = np.clip(w[:, ::-1], 0.0, None)
    vecs[live] = V[:, :, ::-1]
    return ClassShapes(vals, vecs, stats.counts.copy(), clipped)


@dataclass(frozen=True)
class NoiseFactors:
    """What a client needs to generate: per class a factor ``F`` with noise ``eps @ F.T``, ``eps ~ N(0, I)``.

    Attributes:
        factors: ``float32 [C, d, d]``. ``noise_scale=sqrt``: ``F F^T = S_i`` (a Cholesky factor, or
            ``V sqrt(lam)``); ``lambda``: ``F = V diag(lam)``. Zero for classes with fewer than 2 samples.
        counts: ``int64 [C]``, the global sample count behind each class.
        clipped: negative eigenvalues clipped (``lambda``) or classes that needed jitter (``sqrt``).
    """

    factors: np.ndarray
    counts: np.ndarray
    clipped: int = 0


def _cholesky(S: np.ndarray) -> np.ndarray | None:
    """Lower Cholesky factor of one ``[d, d]`` matrix by LAPACK's ``dpotrf`` (what ``np.linalg.cholesky``
    calls, bit for bit, without its batched copy: 2x faster at 65 x 512 x 512); ``None`` if not PD."""
    L, info = lapack.dpotrf(S, lower=1, clean=1, overwrite_a=0)
    return L if info == 0 else None


def _cholesky_factors(covs: np.ndarray) -> tuple[np.ndarray, int]:
    """Lower Cholesky factors of PSD ``covs [m, d, d]`` (float64), one class at a time; a rank-deficient
    matrix gets a jitter of ``1e-10 * mean(diag)`` (relative; raised by decades until it factors) and is
    counted."""
    out, fixed = np.empty_like(covs), 0
    eye = np.eye(covs.shape[1])
    for j, S in enumerate(covs):
        L = _cholesky(S)
        if L is None:
            scale = max(float(np.trace(S)) / S.shape[0], 1e-300)
            for power in range(-12, 0):
                L = _cholesky(S + scale * 10.0**power * eye)
                if L is not None:
                    break
            else:  # pragma: no cover - a PSD matrix plus its trace always factors
                raise InputError("a class covariance is not positive semi-definite")
            fixed += 1
        out[j] = L
    return out, fixed


def noise_factors(stats: ClassStats, noise_scale: str = "sqrt") -> NoiseFactors:
    """Step 3 in the form generation needs: ``sqrt`` takes one Cholesky factor per class (no
    eigendecomposition: ``x + L eps ~ N(x, S)`` exactly as ``V sqrt(lam)``), ``lambda`` the eigenvectors
    scaled by the eigenvalues. Batched over classes."""
    _check_noise_scale(noise_scale)
    C, d = stats.num_classes, stats.dim
    factors = np.zeros((C, d, d), dtype=np.float32)
    live = np.flatnonzero(stats.counts >= 2)
    if live.size == 0:
        return NoiseFactors(factors, stats.counts.copy(), 0)
    if noise_scale == "sqrt":
        L, fixed = _cholesky_factors(stats.covs[live])
        factors[live] = L
        return NoiseFactors(factors, stats.counts.copy(), fixed)
    shapes = class_shapes(stats)
    factors[live] = shapes.eigvecs[live] * shapes.eigvals[live][:, None, :]
    return NoiseFactors(factors, stats.counts.copy(), shapes.clipped)


def sample_with_factor(
    anchors: np.ndarray, per_anchor: np.ndarray, factor: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """``per_anchor[j]`` samples ``anchors[j] + F eps`` (``factor`` ``F [d, d]``), ``float32 [sum, d]``."""
    per_anchor = np.asarray(per_anchor, dtype=np.int64)
    total = int(per_anchor.sum())
    d = anchors.shape[1]
    centers = np.repeat(np.asarray(anchors, dtype=np.float32), per_anchor, axis=0)
    if total == 0 or not np.any(factor):
        return centers.reshape(total, d)
    eps = rng.standard_normal((total, d), dtype=np.float32)
    return centers + eps @ np.asarray(factor, dtype=np.float32).T


def _check_noise_scale(noise_scale: str) -> None:
    if noise_scale not in NOISE_SCALES:
        raise ConfigError("augment.noise_scale", f"expected one of {NOISE_SCALES}, got {noise_scale!r}")


def sample_around(
    anchors: np.ndarray,
    per_anchor: np.ndarray,
    eigvals: np.ndarray,
    eigvecs: np.ndarray,
    noise_scale: str,
    rng: np.random.Generator,
) -> np.ndarray:
    """Draw ``per_anchor[j]`` samples around ``anchors[j]`` along one class shape (step 4).

    Args:
        anchors: ``[m, d]``. per_anchor: ``int [m]`` (>= 0).
        eigvals: ``[d]`` (>= 0). eigvecs: ``[d, d]``, eigenvectors in columns.
        noise_scale: ``sqrt`` or ``lambda``.
        rng: the generator; the same state gives the same samples.

    Returns:
        ``float32 [sum(per_anchor), d]``, the samples of anchor 0 first, then anchor 1, ...
    """
    _check_noise_scale(noise_scale)
    per_anchor = np.asarray(per_anchor, dtype=np.int64)
    total = int(per_anchor.sum())
    d = anchors.shape[1]
    if total == 0:
        return np.empty((0, d), dtype=np.float32)
    lam = np.asarray(eigvals, dtype=np.float64)
    keep = lam > _RANK_TOL * max(float(lam.max()), 0.0) if lam.size and lam.max() > 0 else np.zeros(d, bool)
    scale = np.sqrt(lam[keep]) if noise_scale == "sqrt" else lam[keep]
    basis = (eigvecs[:, keep] * scale).T.astype(np.float32)  # [r, d]
    centers = np.repeat(np.asarray(anchors, dtype=np.float32), per_anchor, axis=0)
    if basis.shape[0] == 0:
        return centers
    eps = rng.standard_normal((total, basis.shape[0]), dtype=np.float32)
    return centers + eps @ basis


def _check_counts(target_per_class: int | None, samples_per_original: int | None) -> None:
    if (target_per_class is None) == (samples_per_original is None):
        raise ConfigError(
            "augment.target_per_class",
            "set exactly one of augment.target_per_class and augment.samples_per_original (the other null)",
        )
    for key, v in (("target_per_class", target_per_class), ("samples_per_original", samples_per_original)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 0):
            raise ConfigError(f"augment.{key}", f"expected a non-negative integer or null, got {v!r}")


def augment_client(
    X: np.ndarray,
    y: np.ndarray,
    factors: NoiseFactors,
    rng: np.random.Generator,
    target_per_class: int | None = 500,
    samples_per_original: int | None = None,
    keep_originals: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Step 4 on one client: expand every local sample along its class's global shape.

    Counts, per class i with ``n_i > 0`` local samples:
      - ``target_per_class=T``: the class ends with ``max(T, n_i)`` samples when ``keep_originals``
        (``T - n_i`` new ones, spread evenly over the originals, the remainder to random originals), or
        exactly ``T`` generated ones when not.
      - ``samples_per_original=s``: every original gets ``s`` new samples (``target_per_class`` must be None).
    Classes with ``n_i = 0`` get nothing (no anchor; see the module docstring).

    Returns:
        ``(features float32 [m, d], labels int64 [m])``: the kept originals first, in input order, then the
        generated samples class by class.
    """
    _check_counts(target_per_class, samples_per_original)
    C, d = factors.factors.shape[:2]
    X, y = _check_xy(X, y, C)
    if X.shape[1] != d:
        raise InputError(f"features have {X.shape[1]} dims, the class shapes {d}")
    feats = [X.astype(np.float32)] if keep_originals else []
    labels = [y] if keep_originals else []
    for c in range(C):
        rows = np.flatnonzero(y == c)
        n = rows.size
        if n == 0:
            continue
        if samples_per_original is not None:
            per = np.full(n, int(samples_per_original), dtype=np.int64)
        else:
            m = max(int(target_per_class) - n, 0) if keep_originals else int(target_per_class)
            per = np.full(n, m // n, dtype=np.int64)
            per[rng.choice(n, size=m % n, replace=False)] += 1
        gen = sample_with_factor(X[rows], per, factors.factors[c], rng)
        feats.append(gen)
        labels.append(np.full(gen.shape[0], c, dtype=np.int64))
    d = X.shape[1]
    if not feats:
        return np.empty((0, d), dtype=np.float32), np.empty(0, dtype=np.int64)
    return np.concatenate(feats).astype(np.float32), np.concatenate(labels)


@dataclass(frozen=True)
class Prototypes:
    """Class means per domain (step 5).

    Attributes:
        counts: ``int64 [D, C]``, the samples behind each prototype.
        means: ``float64 [D, C, d]`` (zero where the count is 0).
    """

    counts: np.ndarray
    means: np.ndarray


def client_prototypes(
    X: np.ndarray, y: np.ndarray, domains: np.ndarray, num_classes: int, num_domains: int
) -> Prototypes:
    """One client's class means per domain (``domains`` is ``int [n]`` in ``0..num_domains-1``)."""
    X, y = _check_xy(X, y, num_classes)
    domains = np.asarray(domains, dtype=np.int64)
    if domains.shape != y.shape or (domains.size and (domains.min() < 0 or domains.max() >= num_domains)):
        raise InputError(f"domains must be [n] ints in 0..{num_domains - 1}")
    cell = domains * num_classes + y
    counts = np.bincount(cell, minlength=num_domains * num_classes).astype(np.int64)
    sums = np.zeros((num_domains * num_classes, X.shape[1]))
    np.add.at(sums, cell, X.astype(np.float64))
    means = sums / np.maximum(counts, 1)[:, None]
    return Prototypes(
        counts.reshape(num_domains, num_classes), means.reshape(num_domains, num_classes, X.shape[1])
    )


def aggregate_prototypes(protos: Sequence[Prototypes]) -> Prototypes:
    """The server's count-weighted class means per domain over all clients."""
    if not protos:
        raise InputError("aggregate_prototypes needs at least one client")
    counts = np.sum([p.counts for p in protos], axis=0)
    sums = np.sum([p.means * p.counts[..., None] for p in protos], axis=0)
    return Prototypes(counts, sums / np.maximum(counts, 1)[..., None])


def augment_from_prototypes(
    prototypes: Prototypes,
    own_domains: Iterable[int],
    factors: NoiseFactors,
    per_prototype: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Step 5 on one client: ``per_prototype`` samples around every prototype of the domains it lacks.

    Args:
        prototypes: from ``aggregate_prototypes`` (``[D, C, d]``).
        own_domains: the domains the client holds data of; their prototypes are skipped.
        factors: the global class shapes as noise factors.
        per_prototype: samples per (other domain, class) prototype that exists (count > 0).

    Returns:
        ``(features float32 [m, d], labels int64 [m])``, domain by domain, class by class.
    """
    if (
        isinstance(per_prototype, bool)
        or not isinstance(per_prototype, int | np.integer)
        or per_prototype < 0
    ):
        raise ConfigError("augment.per_prototype", f"expected a non-negative integer, got {per_prototype!r}")
    own = set(int(d) for d in own_domains)
    D, C, d = prototypes.means.shape
    feats, labels = [np.empty((0, d), dtype=np.float32)], [np.empty(0, dtype=np.int64)]
    for dom in range(D):
        if dom in own:
            continue
        for c in np.flatnonzero(prototypes.counts[dom]):
            gen = sample_with_factor(
                prototypes.means[dom, c][None, :], np.array([per_prototype]), factors.factors[c], rng
            )
            feats.append(gen)
            labels.append(np.full(gen.shape[0], c, dtype=np.int64))
    return np.concatenate(feats), np.concatenate(labels)
