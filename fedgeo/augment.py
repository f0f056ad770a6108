"""The ``augment`` options: GGEUR (``augment=ggeur``) or nothing (``augment=none``), as a message exchange.

GGEUR is one round before training, written as three pure steps so that the same code runs directly
(``mode=local``) and through Flower messages (``mode=fl``, ``fedgeo.fl``):

1. ``client_upload(data)`` on every client: class counts, means and packed covariances (and, with
   ``multi_domain``, class means per domain), a dict of arrays (what the client sends up).
2. ``server_reply(uploads)`` on the server: pooled statistics (``cov_clients=all|guide``), the per-class
   noise factors and the prototypes, a dict of arrays (what every client receives).
3. ``client_augment(data, reply, rng)`` on every client: its augmented training set, built once.

Clients hold features already normalised (``fedgeo.normalize``): statistics, shapes and generated rows are
in the space the classifier sees.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np

from common.config import schema
from common.errors import ConfigError, InputError
from common.seeding import derive_seed
from fedgeo.ggeur import (
    COV_CLIENTS,
    NOISE_SCALES,
    NoiseFactors,
    Prototypes,
    aggregate_packed,
    aggregate_prototypes,
    augment_client,
    augment_from_prototypes,
    client_prototypes,
    client_stats,
    noise_factors,
    pack_sym,
    withhold_small,
)

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class ClientData:
    """One client's training data: ``features float32 [n, d]``, ``labels int64 [n]``, ``domains int64 [n]``
    (generated rows carry -1, prototype samples their prototype's domain)."""

    features: np.ndarray
    labels: np.ndarray
    domains: np.ndarray

    @property
    def size(self) -> int:
        return int(self.labels.size)


def nbytes(arrays: Arrays) -> int:
    """Bytes of a message's arrays (the payload, without framing)."""
    return int(sum(np.asarray(a).nbytes for a in arrays.values()))


@dataclass(frozen=True)
class Augmenter:
    """Base of the ``augment`` options. ``enabled=False`` means no exchange round at all."""

    kind: str = "none"
    enabled: ClassVar[bool] = False

    def resolve(self, partition_method: str) -> Augmenter:
        """This augmenter with settings that depend on the partition filled in."""
        return self

    @property
    def label(self) -> str:
        """The name in tables: ``none``, ``ggeur`` or ``ggeur+md`` (with the multi-domain prototype step)."""
        return self.kind

    def client_upload(self, data: ClientData, num_classes: int, num_domains: int) -> Arrays:
        return {}

    def server_reply(self, uploads: Sequence[Arrays]) -> tuple[Arrays, dict[str, Any]]:
        return {}, {}

    def client_augment(self, data: ClientData, reply: Arrays, rng: np.random.Generator) -> ClientData:
        return data

    def augment_all(
        self, clients: Sequence[ClientData], num_classes: int, num_domains: int, seed: int
    ) -> tuple[list[ClientData], dict[str, Any]]:
        """The whole exchange without transport; returns the clients' sets and the exchange's facts
        (``bytes_up``, ``bytes_down`` as the messages would carry them)."""
        if not self.enabled:
            return list(clients), {"bytes_up": 0, "bytes_down": 0}
        ups = [self.client_upload(c, num_classes, num_domains) for c in clients]
        reply, info = self.server_reply(ups)
        out = [
            self.client_augment(c, reply, np.random.default_rng(derive_seed(seed, "ggeur", k)))
            for k, c in enumerate(clients)
        ]
        info |= {"bytes_up": sum(nbytes(u) for u in ups), "bytes_down": nbytes(reply) * len(clients)}
        return out, info


@schema("augment", "none")
@dataclass(frozen=True)
class NoAugment(Augmenter):
    """No augmentation: every client trains on its raw data."""

    kind: str = "none"

    def __post_init__(self) -> None:
        if self.kind != "none":
            raise ConfigError("kind", f"expected none for augment=none, got {self.kind!r}")


@schema("augment", "ggeur")
@dataclass(frozen=True)
class GGEUR(Augmenter):
    """GGEUR's options (docs/ggeur.md).

    Attributes:
        noise_scale: ``sqrt`` (``x + N(0, S)``, the official code) or ``lambda`` (the paper's text).
        target_per_class: each local class ends with ``max(T, n)`` samples; ``None`` to use
            ``samples_per_original`` instead.
        samples_per_original: new samples around every local sample.
        keep_originals: keep the real rows.
        multi_domain: also share per-domain class prototypes and draw around the other domains'; ``None``
            = from the partition (true only for ``partition=domain``).
        per_prototype: samples per (other domain, class) prototype.
        cov_clients: ``all`` (every client's statistics; the exact union covariance) or ``guide`` (per
            class, the largest clients holding >= ``guide_fraction`` of it, as the official code).
        min_class_count: privacy floor: a client sends no mean, covariance or prototype of a class (or a
            (domain, class) cell) it holds fewer samples of (``fedgeo.ggeur.withhold_small``); 1 = none.
    """

    kind: str = "ggeur"
    noise_scale: str = "sqrt"
    target_per_class: int | None = 500
    samples_per_original: int | None = None
    keep_originals: bool = True
    multi_domain: bool | None = None
    per_prototype: int = 500
    cov_clients: str = "all"
    guide_fraction: float = 0.8
    min_class_count: int = 5
    enabled: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.kind != "ggeur":
            raise ConfigError("kind", f"expected ggeur for augment=ggeur, got {self.kind!r}")
        if self.noise_scale not in NOISE_SCALES:
            raise ConfigError("noise_scale", f"expected one of {NOISE_SCALES}, got {self.noise_scale!r}")
        if self.cov_clients not in COV_CLIENTS:
            raise ConfigError("cov_clients", f"expected one of {COV_CLIENTS}, got {self.cov_clients!r}")
        if not 0 < self.guide_fraction <= 1:
            raise ConfigError("guide_fraction", f"expected a number in (0, 1], got {self.guide_fraction!r}")
        if (self.target_per_class is None) == (self.samples_per_original is None):
            raise ConfigError(
                "target_per_class",
                "set exactly one of target_per_class and samples_per_original (other null)",
            )
        if (
            isinstance(self.min_class_count, bool)
            or not isinstance(self.min_class_count, int)
            or self.min_class_count < 1
        ):
            raise ConfigError("min_class_count", f"expected a positive integer, got {self.min_class_count!r}")
        for key in ("target_per_class", "samples_per_original", "per_prototype"):
            v = getattr(self, key)
            if v is not None and v < 0:
                raise ConfigError(key, f"expected a non-negative integer, got {v!r}")

    def resolve(self, partition_method: str) -> GGEUR:
        if self.multi_domain is not None:
            return self
        return replace(self, multi_domain=partition_method == "domain")

    @property
    def label(self) -> str:
        return "ggeur+md" if self.multi_domain else "ggeur"

    def client_upload(self, data: ClientData, num_classes: int, num_domains: int) -> Arrays:
        """Step 1 (client): ``counts [C]``, ``means [C, d]``, ``covs [C, d(d+1)/2]`` (float64), and with
        ``multi_domain`` ``proto_counts [D, C]``, ``proto_means [D, C, d]``."""
        st = client_stats(data.features, data.labels, num_classes)
        pr = None
        if self.multi_domain:
            doms = np.maximum(data.domains, 0)
            pr = client_prototypes(data.features, data.labels, doms, num_classes, num_domains)
        st, pr, cut_classes, cut_protos = withhold_small(st, pr, self.min_class_count)
        up = {"counts": st.counts, "means": st.means, "covs": pack_sym(st.covs),
              "withheld": np.array([cut_classes, cut_protos], dtype=np.int64)}  # fmt: skip
        if pr is not None:
            up |= {"proto_counts": pr.counts, "proto_means": pr.means}
        return up

    def server_reply(self, uploads: Sequence[Arrays]) -> tuple[Arrays, dict[str, Any]]:
        """Step 2 (server): ``factors float32 [C, d, d]``, ``counts [C]`` (and the pooled prototypes)."""
        if not uploads:
            raise InputError("GGEUR needs the statistics of at least one client")
        packed = [(u["counts"], u["means"], u["covs"]) for u in uploads]
        pooled = aggregate_packed(packed, self.cov_clients, self.guide_fraction)
        nf = noise_factors(pooled, self.noise_scale)
        reply = {"factors": nf.factors, "counts": nf.counts}
        if self.multi_domain:
            pr = aggregate_prototypes([Prototypes(u["proto_counts"], u["proto_means"]) for u in uploads])
            reply |= {"proto_counts": pr.counts, "proto_means": pr.means}
        withheld = np.sum([u["withheld"] for u in uploads if "withheld" in u], axis=0, dtype=np.int64)
        info = {"clipped": nf.clipped, "withheld_classes": int(withheld[0]) if withheld.size else 0,
                "withheld_prototypes": int(withheld[1]) if withheld.size else 0}  # fmt: skip
        return reply, info

    def client_augment(self, data: ClientData, reply: Arrays, rng: np.random.Generator) -> ClientData:
        """Step 3 (client): local samples expanded along the global shapes (plus prototype samples)."""
        nf = NoiseFactors(reply["factors"], reply["counts"])
        X, y = augment_client(
            data.features,
            data.labels,
            nf,
            rng,
            target_per_class=self.target_per_class,
            samples_per_original=self.samples_per_original,
            keep_originals=self.keep_originals,
        )
        n_orig = data.size if self.keep_originals else 0
        feats, labels = [X], [y]
        doms = [data.domains[:n_orig].astype(np.int64), np.full(y.size - n_orig, -1, dtype=np.int64)]
        if self.multi_domain and "proto_means" in reply:
            protos = Prototypes(reply["proto_counts"], reply["proto_means"])
            own = np.unique(data.domains[data.domains >= 0])
            Xp, yp = augment_from_prototypes(protos, own, nf, self.per_prototype, rng)
            feats.append(Xp)
            labels.append(yp)
            D = protos.counts.shape[0]
            per_dom = [
                0 if d in own else self.per_prototype * np.count_nonzero(protos.counts[d]) for d in range(D)
            ]
            doms.append(np.repeat(np.arange(D), per_dom))
        return ClientData(np.concatenate(feats), np.concatenate(labels), np.concatenate(doms))
