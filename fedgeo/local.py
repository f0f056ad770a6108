"""``mode=local``: one classifier per client, trained on its own (optionally GGEUR-augmented) data only.

Shows what GGEUR buys a client before any federation. Every client's model is scored on the global test
set; the run's metrics are the mean, spread and extremes over clients, and the per-client values are series
with the step name ``client``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from common.experiment import RunOutput
from common.log import RunLogger
from common.progress import track
from common.seeding import derive_seed
from fedgeo.augment import Augmenter, ClientData
from fedgeo.classifier import TrainSettings, train_epochs
from fedgeo.data import EmbeddingDataset
from fedgeo.federation import TestSet, client_normalizer, evaluate, normalized
from fedgeo.models import ClassifierModel


def run_local(
    raw: Sequence[ClientData],
    test: EmbeddingDataset,
    normalize: str,
    augment: Augmenter,
    model: ClassifierModel,
    train: TrainSettings,
    seed: int,
    logger: RunLogger,
) -> RunOutput:
    """``mode=local``: normaliser from the clients, GGEUR (direct, no transport), one model per client."""
    norm, _ = client_normalizer(normalize, raw)
    clients = normalized(norm, raw)
    t0 = time.perf_counter()
    clients, info = augment.augment_all(clients, test.num_classes, test.num_domains, seed)
    augment_s = time.perf_counter() - t0
    logger.event("augment", label=augment.label, **info)
    ts = TestSet(norm(test.features), test.labels, test.domains, test.domain_names)
    t1 = time.perf_counter()
    out = train_local_clients(clients, ts, model, train, test.num_classes, seed, logger)
    out.metrics |= {
        "n_raw_mean": float(np.mean([c.size for c in raw])),
        "augment_s": augment_s,
        "train_s": time.perf_counter() - t1,
        "multi_domain": float(bool(getattr(augment, "multi_domain", False))),
        "ggeur_bytes_up": float(info["bytes_up"]),
        "ggeur_bytes_down": float(info["bytes_down"]),
        **{f"ggeur_{k}": float(info[k]) for k in ("withheld_classes", "withheld_prototypes") if k in info},
    }
    return out


def train_local_clients(
    clients: Sequence[ClientData],
    test: TestSet,
    model: ClassifierModel,
    train: TrainSettings,
    num_classes: int,
    seed: int,
    logger: RunLogger,
) -> RunOutput:
    """Train and score one model per client.

    Args:
        clients: the clients' training sets, already normalised (and augmented).
        test: the global test set in the same space.
    """
    accs, dom_avgs, sizes = [], [], []
    dim = clients[0].features.shape[1]
    for k in track(range(len(clients)), description="local training"):
        c = clients[k]
        net = model.make(dim, num_classes, seed=derive_seed(seed, "model", k))
        train_epochs(
            net,
            c.features,
            c.labels,
            epochs=train.epochs,
            batch_size=train.batch_size,
            lr=train.lr,
            seed=derive_seed(seed, "batches", k),
            weight_decay=train.weight_decay,
            min_steps=train.min_steps,
        )
        ev = evaluate(net, test)
        accs.append(ev["acc"])
        dom_avgs.append(ev["acc_domain_avg"])
        sizes.append(c.size)
        logger.log(
            {"acc_local": accs[-1], "acc_local_domain_avg": dom_avgs[-1], "n_train": sizes[-1]}, k, "client"
        )
    metrics = {
        "acc_local_mean": float(np.mean(accs)),
        "acc_local_std": float(np.std(accs)),
        "acc_local_min": float(np.min(accs)),
        "acc_local_max": float(np.max(accs)),
        "acc_local_domain_avg": float(np.mean(dom_avgs)),
        "num_clients": len(clients),
        "n_train_mean": float(np.mean(sizes)),
    }
    series = {"acc_local": accs, "acc_local_domain_avg": dom_avgs, "n_train": [float(s) for s in sizes]}
    return RunOutput(metrics, series, {k: "client" for k in series})
