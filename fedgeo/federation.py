"""A federation's data as the clients and the server see it, and the global evaluation.

``client_datasets`` cuts the training split into the clients' raw sets; ``client_normalizer`` fits the
feature normaliser from the clients' statistics (never from rows no client holds, never from the test set);
``evaluate`` scores a model on the global test set overall, per domain and as the unweighted domain mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedgeo.augment import ClientData
from fedgeo.data import EmbeddingDataset
from fedgeo.normalize import Normalizer, fit_from_stats, merge_norm_stats, norm_stats
from fedgeo.partitions import Partition


def client_datasets(train: EmbeddingDataset, part: Partition) -> list[ClientData]:
    """The clients' raw sets (``features``, ``labels``, ``domains``) in partition order."""
    return [ClientData(train.features[i], train.labels[i], train.domains[i]) for i in part.client_indices]


def client_normalizer(kind: str, clients: Sequence[ClientData]) -> tuple[Normalizer, int]:
    """The ``kind`` normaliser fitted from the clients' per-dimension statistics (what the server would
    aggregate) and the bytes the clients send for it (``count, mean, m2`` each)."""
    stats = [norm_stats(kind, c.features) for c in clients]
    sent = 0 if kind in ("none", "l2") else sum(8 * (1 + s.mean.size + s.m2.size) for s in stats)
    return fit_from_stats(kind, merge_norm_stats(stats)), sent


def normalized(norm: Normalizer, clients: Sequence[ClientData]) -> list[ClientData]:
    """Every client's features passed through ``norm`` (``float32``)."""
    return [ClientData(norm(c.features), c.labels, c.domains) for c in clients]


@dataclass(frozen=True)
class TestSet:
    """The global test set in the classifier's space: ``X float32 [n, d]``, ``y [n]``, ``domains [n]``."""

    X: np.ndarray
    y: np.ndarray
    domains: np.ndarray
    domain_names: tuple[str, ...]


@torch.no_grad()
def evaluate(model: nn.Module, test: TestSet) -> dict[str, float]:
    """``acc`` (fraction), ``loss`` (mean cross-entropy), ``acc_<domain>`` and ``acc_domain_avg``."""
    model.eval()
    logits = model(torch.as_tensor(test.X))
    y = torch.as_tensor(test.y)
    pred = logits.argmax(dim=1).numpy()
    out = {
        "acc": float(np.mean(pred == test.y)),
        "loss": float(nn.functional.cross_entropy(logits, y)),
    }
    per = []
    for d, name in enumerate(test.domain_names):
        rows = test.domains == d
        if rows.any():
            out[f"acc_{name}"] = float(np.mean(pred[rows] == test.y[rows]))
            per.append(out[f"acc_{name}"])
    out["acc_domain_avg"] = float(np.mean(per))
    return out
