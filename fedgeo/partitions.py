"""Client partitions of a training set: label skew, domain skew, and domain plus label skew.

Every partitioner returns a ``Partition``: one sorted ``int64`` index array per client (rows of the training
set; clients are disjoint), the per-client class counts, a content hash, and the method with its
parameters. The same inputs and seed give the identical partition. The Dirichlet splits use Flower
Datasets' ``DirichletPartitioner`` on a table of the rows' labels (rows are shuffled with the seed first,
because that partitioner cuts each class into contiguous runs).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common.atomic import atomic_savez, atomic_write_json
from common.config import schema
from common.errors import ConfigError, InputError
from common.seeding import derive_seed
from fedgeo.data import EmbeddingDataset

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

PARTITIONS = ("dirichlet", "domain", "domain_dirichlet")


@dataclass(frozen=True)
class Partition:
    """Which training rows each client holds.

    Attributes:
        client_indices: one sorted ``int64`` array per client (K clients).
        counts: ``int64 [K, C]``, samples of each class per client.
        client_domains: ``int64 [K]``, the client's domain id, or -1 when its rows span several domains.
        method: ``dirichlet``, ``domain`` or ``domain_dirichlet``.
        params: the partitioner's arguments (seed included).
    """

    client_indices: tuple[np.ndarray, ...]
    counts: np.ndarray
    client_domains: np.ndarray
    method: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def num_clients(self) -> int:
        return len(self.client_indices)

    @property
    def hash(self) -> str:
        """sha256 (16 hex digits) of the clients' index arrays, in client order."""
        h = hashlib.sha256()
        for idx in self.client_indices:
            h.update(np.int64(idx.size).tobytes())
            h.update(np.ascontiguousarray(idx, dtype=np.int64).tobytes())
        return h.hexdigest()[:16]

    def summary(self) -> dict[str, Any]:
        """JSON-ready description: method, params, hash, sizes, per-client class counts and domains."""
        return {
            "method": self.method,
            "params": self.params,
            "hash": self.hash,
            "num_clients": self.num_clients,
            "sizes": [int(i.size) for i in self.client_indices],
            "client_domains": self.client_domains.tolist(),
            "counts": self.counts.tolist(),
        }

    def save(self, npz_path: str | os.PathLike[str], json_path: str | os.PathLike[str]) -> None:
        """Write the indices (``indices`` concatenated, ``offsets [K+1]``, ``counts``, ``client_domains``)
        to ``npz_path`` and the summary to ``json_path``, both atomically."""
        offsets = np.concatenate([[0], np.cumsum([i.size for i in self.client_indices])]).astype(np.int64)
        atomic_savez(
            npz_path,
            indices=np.concatenate(self.client_indices).astype(np.int64),
            offsets=offsets,
            counts=self.counts,
            client_domains=self.client_domains,
            hash=np.array(self.hash),
            params=np.array(json.dumps(self.params, sort_keys=True)),
        )
        atomic_write_json(json_path, self.summary())

    @classmethod
    def load(cls, npz_path: str | os.PathLike[str], method: str = "loaded") -> Partition:
        """Read a partition written by ``save``."""
        try:
            z = np.load(npz_path)
            offsets, indices = z["offsets"], z["indices"]
            counts, domains = z["counts"], z["client_domains"]
            params = json.loads(str(z["params"]))
        except (OSError, KeyError, ValueError) as exc:
            raise InputError(f"{npz_path}: not a saved partition ({exc})") from exc
        parts = tuple(indices[offsets[k] : offsets[k + 1]] for k in range(offsets.size - 1))
        return cls(parts, counts, domains, method, params)


def _finish(
    parts: list[np.ndarray], labels: np.ndarray, domains: np.ndarray | None, C: int, method: str, params: dict
) -> Partition:
    parts_t = tuple(np.sort(np.asarray(p, dtype=np.int64)) for p in parts)
    counts = np.stack([np.bincount(labels[p], minlength=C) for p in parts_t]).astype(np.int64)
    cd = np.full(len(parts_t), -1, dtype=np.int64)
    if domains is not None:
        for k, p in enumerate(parts_t):
            u = np.unique(domains[p])
            if u.size == 1:
                cd[k] = u[0]
    return Partition(parts_t, counts, cd, method, params)


def _check_int(key: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ConfigError(key, f"expected an integer >= {low}, got {value!r}")
    return int(value)


def _check_beta(beta: Any) -> float:
    if isinstance(beta, bool) or not isinstance(beta, int | float) or not beta > 0:
        raise ConfigError("partition.beta", f"expected a positive number, got {beta!r}")
    return float(beta)


def _flwr_dirichlet(
    groups: np.ndarray, num_clients: int, beta: float, min_size: int, seed: int
) -> list[np.ndarray]:
    """Split the rows ``0..len(groups)-1`` over clients with a Dirichlet(beta) per group value.

    Uses ``flwr_datasets.partitioner.DirichletPartitioner``; the rows are permuted with ``seed`` first.
    """
    from datasets import Dataset
    from flwr_datasets.partitioner import DirichletPartitioner

    if groups.size == 0:
        return [np.empty(0, dtype=np.int64) for _ in range(num_clients)]
    order = np.random.default_rng(derive_seed(seed, "dirichlet-order")).permutation(groups.size)
    table = Dataset.from_dict({"row": order.tolist(), "group": groups[order].tolist()})
    part = DirichletPartitioner(
        num_partitions=num_clients,
        partition_by="group",
        alpha=beta,
        min_partition_size=min_size,
        self_balancing=False,
        shuffle=True,
        seed=derive_seed(seed, "dirichlet"),
    )
    part.dataset = table
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return [np.asarray(part.load_partition(k)["row"], dtype=np.int64) for k in range(num_clients)]
    except ValueError as exc:
        raise ConfigError(
            "partition.min_size",
            f"no Dirichlet(beta={beta}) draw in 10 tries gave every one of {num_clients} clients at least "
            f"{min_size} samples; lower partition.min_size or raise partition.beta ({exc})",
        ) from exc


def dirichlet_label_skew(
    labels: np.ndarray,
    num_clients: int,
    beta: float,
    seed: int,
    num_classes: int | None = None,
    one_per_class: bool = True,
    min_size: int = 0,
    domains: np.ndarray | None = None,
) -> Partition:
    """Label skew: for every class, its samples are split over the clients by proportions ~ Dirichlet(beta).

    Args:
        labels: ``int64 [n]`` class ids.
        num_clients: K >= 1.
        beta: the Dirichlet concentration (> 0); small values give strong skew.
        seed: partitions are identical for the same seed.
        num_classes: C (default ``labels.max() + 1``).
        one_per_class: first give every client one random sample of every class (the official GGEUR code
            does this), then split the rest by the Dirichlet. Every class needs at least K samples.
        min_size: redraw (at most 10 times) until every client holds at least this many samples of the
            Dirichlet part.
        domains: optional ``int64 [n]`` domain ids, only to fill ``client_domains``.
    """
    labels = np.asarray(labels, dtype=np.int64)
    K = _check_int("partition.clients", num_clients, 1)
    beta = _check_beta(beta)
    min_size = _check_int("partition.min_size", min_size, 0)
    C = int(num_classes if num_classes is not None else labels.max() + 1)
    rng = np.random.default_rng(derive_seed(seed, "one-per-class"))
    parts: list[list[np.ndarray]] = [[] for _ in range(K)]
    rest = np.arange(labels.size)
    if one_per_class:
        taken = np.zeros(labels.size, dtype=bool)
        for c in range(C):
            rows = np.flatnonzero(labels == c)
            if rows.size < K:
                raise InputError(
                    f"partition.one_per_class: class {c} has {rows.size} training samples, fewer than the "
                    f"{K} clients; set partition.one_per_class=false or use fewer clients"
                )
            pick = rng.choice(rows, size=K, replace=False)
            taken[pick] = True
            for k in range(K):
                parts[k].append(pick[k : k + 1])
        rest = np.flatnonzero(~taken)
    split = _flwr_dirichlet(labels[rest], K, beta, min_size, seed)
    for k in range(K):
        parts[k].append(rest[split[k]])
    params = {"clients": K, "beta": beta, "seed": seed, "one_per_class": one_per_class, "min_size": min_size}
    return _finish([np.concatenate(p) for p in parts], labels, domains, C, "dirichlet", params)


def domain_skew(
    labels: np.ndarray,
    domains: np.ndarray,
    seed: int,
    fraction: float = 1.0,
    clients_per_domain: int = 1,
    num_classes: int | None = None,
    num_domains: int | None = None,
) -> Partition:
    """Domain skew: every client holds samples of one domain only.

    Client ``k`` belongs to domain ``k // clients_per_domain``. Each client draws ``fraction`` of its domain's
    rows uniformly without replacement (``round(fraction * domain size)``, at least one), disjoint from the
    other clients of its domain; ``fraction * clients_per_domain`` must not exceed 1. The official GGEUR
    code uses one client per domain with 10% of the domain for Digits.
    """
    labels = np.asarray(labels, dtype=np.int64)
    domains = np.asarray(domains, dtype=np.int64)
    m = _check_int("partition.clients_per_domain", clients_per_domain, 1)
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction <= 1:
        raise ConfigError("partition.fraction", f"expected a number in (0, 1], got {fraction!r}")
    if fraction * m > 1 + 1e-12:
        raise ConfigError(
            "partition.fraction", f"fraction {fraction} x clients_per_domain {m} exceeds the whole domain"
        )
    C = int(num_classes if num_classes is not None else labels.max() + 1)
    D = int(num_domains if num_domains is not None else domains.max() + 1)
    parts: list[np.ndarray] = []
    for d in range(D):
        rows = np.flatnonzero(domains == d)
        if rows.size == 0:
            raise InputError(f"partition=domain: domain {d} has no training samples")
        perm = np.random.default_rng(derive_seed(seed, "domain", d)).permutation(rows)
        take = max(1, round(fraction * rows.size))
        for j in range(m):
            parts.append(perm[j * take : (j + 1) * take])
    params = {"fraction": float(fraction), "clients_per_domain": m, "seed": seed}
    return _finish(parts, labels, domains, C, "domain", params)


def domain_label_dirichlet(
    labels: np.ndarray,
    domains: np.ndarray,
    num_clients: int,
    beta: float,
    seed: int,
    num_classes: int | None = None,
    min_size: int = 0,
) -> Partition:
    """Domain plus label skew (Office-Home-LDS style): every (domain, class) cell is split over the clients
    by proportions ~ Dirichlet(beta), so clients differ in both which domains and which classes they hold."""
    labels = np.asarray(labels, dtype=np.int64)
    domains = np.asarray(domains, dtype=np.int64)
    K = _check_int("partition.clients", num_clients, 1)
    beta = _check_beta(beta)
    min_size = _check_int("partition.min_size", min_size, 0)
    C = int(num_classes if num_classes is not None else labels.max() + 1)
    split = _flwr_dirichlet(domains * C + labels, K, beta, min_size, seed)
    params = {"clients": K, "beta": beta, "seed": seed, "min_size": min_size}
    return _finish(split, labels, domains, C, "domain_dirichlet", params)


@dataclass(frozen=True)
class Partitioner:
    """Base of the ``partition`` options; ``method`` is the option's name (records and tables use it)."""

    method: str = ""

    def split(self, train: EmbeddingDataset, seed: int) -> Partition:
        """The partition of ``train``'s rows; ``seed`` is the run's (a partition seed is derived from it)."""
        raise NotImplementedError(f"{type(self).__name__}.split")

    def _check_method(self, expected: str) -> None:
        if self.method != expected:
            raise ConfigError("method", f"expected {expected} for partition={expected}, got {self.method!r}")


@schema("partition", "dirichlet")
@dataclass(frozen=True)
class DirichletSplit(Partitioner):
    """Label skew (``dirichlet_label_skew``): ``clients``, ``beta``, ``one_per_class``, ``min_size``."""

    method: str = "dirichlet"
    clients: int = 10
    beta: float = 0.1
    one_per_class: bool = True
    min_size: int = 0

    def __post_init__(self) -> None:
        self._check_method("dirichlet")
        _check_int("clients", self.clients, 1)
        if not self.beta > 0:
            raise ConfigError("beta", f"expected a positive number, got {self.beta!r}")

    def split(self, train: EmbeddingDataset, seed: int) -> Partition:
        return dirichlet_label_skew(
            train.labels,
            self.clients,
            self.beta,
            derive_seed(seed, "partition"),
            num_classes=train.num_classes,
            one_per_class=self.one_per_class,
            min_size=self.min_size,
            domains=train.domains,
        )


@schema("partition", "domain")
@dataclass(frozen=True)
class DomainSplit(Partitioner):
    """Domain skew (``domain_skew``): client k holds ``fraction`` of domain ``k // clients_per_domain``."""

    method: str = "domain"
    fraction: float = 1.0
    clients_per_domain: int = 1

    def __post_init__(self) -> None:
        self._check_method("domain")

    def split(self, train: EmbeddingDataset, seed: int) -> Partition:
        return domain_skew(
            train.labels,
            train.domains,
            derive_seed(seed, "partition"),
            fraction=self.fraction,
            clients_per_domain=self.clients_per_domain,
            num_classes=train.num_classes,
            num_domains=train.num_domains,
        )


@schema("partition", "domain_dirichlet")
@dataclass(frozen=True)
class DomainDirichletSplit(Partitioner):
    """Domain plus label skew (``domain_label_dirichlet``): every (domain, class) cell by Dirichlet(beta)."""

    method: str = "domain_dirichlet"
    clients: int = 10
    beta: float = 0.1
    min_size: int = 0

    def __post_init__(self) -> None:
        self._check_method("domain_dirichlet")
        _check_int("clients", self.clients, 1)
        if not self.beta > 0:
            raise ConfigError("beta", f"expected a positive number, got {self.beta!r}")

    def split(self, train: EmbeddingDataset, seed: int) -> Partition:
        return domain_label_dirichlet(
            train.labels,
            train.domains,
            self.clients,
            self.beta,
            derive_seed(seed, "partition"),
            num_classes=train.num_classes,
            min_size=self.min_size,
        )
