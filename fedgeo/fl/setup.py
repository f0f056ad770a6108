"""``Setup``: what every party of a federated run needs besides its data, as built objects.

The runner builds it from the run's config (``fedgeo.fl.run`` for the in-process and Ray backends); a
deployed app rebuilds it from Flower's ``run_config`` (``fedgeo.fl.app``). The client app
(``fedgeo.fl.client_app``) and the server app (``fedgeo.fl.server_app``) read their settings from it.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedgeo.augment import Augmenter
from fedgeo.classifier import TrainSettings
from fedgeo.fl.settings import FLSettings
from fedgeo.fl.strategy.base import FLStrategy
from fedgeo.models import ClassifierModel


@dataclass(frozen=True)
class Setup:
    """A run's settings.

    Attributes:
        strategy: the federated strategy (client update, server aggregation).
        model: the classifier on embeddings every client trains.
        augment: the augmenter, resolved for the partition (GGEUR or none).
        train: the classifier's training settings (batch size).
        fl: the ``fl`` block (rounds, local budget, faults, ...).
        normalize: the feature normaliser's kind (``fedgeo.normalize``).
        num_classes, num_domains, dim: the data's classes, domains and embedding width.
        seed: the run's seed (local batch orders and GGEUR draws derive from it).
        data_dir: the folder of the clients' sets (a node's ``data-dir`` node config overrides it).
    """

    strategy: FLStrategy
    model: ClassifierModel
    augment: Augmenter
    train: TrainSettings
    fl: FLSettings
    normalize: str
    num_classes: int
    num_domains: int
    dim: int
    seed: int
    data_dir: str
