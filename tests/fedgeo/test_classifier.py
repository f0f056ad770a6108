"""The linear classifier, and GGEUR's benefit for one client's classifier under strong label skew."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.errors import ConfigError
from fedgeo.classifier import evaluate, make_classifier, predict, train_epochs
from fedgeo.ggeur import ClientData, augment_federation
from fedgeo.partitions import dirichlet_label_skew
from fedgeo.synthetic import make_synthetic


def test_training_is_deterministic_and_learns() -> None:
    s = make_synthetic(num_classes=3, dim=5, train_per_class=100, test_per_class=50, separation=6.0, seed=0)
    weights = []
    for _ in range(2):
        m = make_classifier(5, 3, seed=1)
        losses = train_epochs(m, s.train.features, s.train.labels, epochs=5, batch_size=32, lr=1e-2, seed=2)
        weights.append(m.weight.detach().clone())
    assert torch.equal(weights[0], weights[1])
    assert losses[-1] < losses[0]
    assert evaluate(m, s.test.features, s.test.labels) > 0.8
    assert predict(m, s.test.features).dtype == np.int64
    assert train_epochs(make_classifier(5, 3), np.zeros((0, 5)), np.zeros(0), 1, 8, 1e-3, 0) == []
    with pytest.raises(ConfigError, match="train.lr"):
        train_epochs(m, s.train.features, s.train.labels, epochs=1, batch_size=8, lr=0, seed=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ggeur_beats_raw_local_data_under_strong_label_skew(seed: int) -> None:
    syn = make_synthetic(num_classes=10, dim=16, train_per_class=60, test_per_class=40, seed=seed)
    tr, te = syn.train, syn.test
    part = dirichlet_label_skew(tr.labels, 10, 0.05, seed=seed, num_classes=10)
    clients = [ClientData(tr.features[i], tr.labels[i], tr.domains[i]) for i in part.client_indices]
    rngs = [np.random.default_rng(k) for k in range(10)]
    augmented, _ = augment_federation(clients, 10, 1, rngs, target_per_class=100)
    acc = []
    for data in (clients[0], augmented[0]):
        model = make_classifier(16, 10, seed=0)
        train_epochs(model, data.features, data.labels, epochs=10, batch_size=64, lr=1e-2, seed=0)
        acc.append(evaluate(model, te.features, te.labels))
    assert acc[1] > acc[0] + 0.15, acc
