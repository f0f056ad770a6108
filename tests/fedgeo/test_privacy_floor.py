"""``augment.min_class_count``: a client sends no statistics of a class (or a domain's prototype of it) it
holds fewer samples of; what it does send is unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from common.errors import ConfigError
from fedgeo.augment import GGEUR, ClientData
from fedgeo.ggeur import unpack_sym


def _client() -> ClientData:
    """Class 0: 6 rows, class 1: 2 rows, class 2: 1 row; domains 0/1 mixed (4 dims)."""
    rng = np.random.default_rng(3)
    y = np.array([0, 0, 0, 0, 0, 0, 1, 1, 2])
    dom = np.array([0, 0, 0, 1, 1, 1, 0, 0, 1])
    return ClientData(rng.normal(size=(9, 4)).astype(np.float32), y, dom)


def test_small_classes_are_withheld_and_counted() -> None:
    data = _client()
    up = GGEUR(min_class_count=3, multi_domain=True).client_upload(data, 3, 2)
    assert up["counts"].tolist() == [6, 0, 0]
    assert not up["means"][1:].any() and not unpack_sym(up["covs"], 4)[1:].any()
    np.testing.assert_allclose(up["means"][0], data.features[:6].mean(axis=0), rtol=1e-6)
    assert up["proto_counts"].tolist() == [[3, 0, 0], [3, 0, 0]]  # the 2-row class-1 cell is withheld too
    assert not up["proto_means"][:, 1:].any()
    assert up["withheld"].tolist() == [2, 2]


def test_floor_of_one_sends_every_class_as_before() -> None:
    up = GGEUR(min_class_count=1).client_upload(_client(), 3, 2)
    assert up["counts"].tolist() == [6, 2, 1] and up["withheld"].tolist() == [0, 0]
    np.testing.assert_allclose(up["means"][2], _client().features[8], rtol=1e-6)  # one sample sent exactly


def test_server_counts_withheld_classes_and_clients_still_augment_them() -> None:
    aug = GGEUR(min_class_count=3, target_per_class=10)
    clients = [_client(), _client()]
    out, info = aug.augment_all(clients, 3, 2, seed=0)
    assert info["withheld_classes"] == 4 and info["withheld_prototypes"] == 0
    assert np.bincount(out[0].labels, minlength=3).tolist() == [10, 10, 10]


def test_bad_floor_names_the_key() -> None:
    with pytest.raises(ConfigError, match="min_class_count"):
        GGEUR(min_class_count=0)
