"""The option schemas of ``fedgeo`` (``@schema`` classes), installed by ``common.config.install_schemas``.

A new dataset, partition, augmenter, classifier or federated strategy is added here once; its YAML in
``conf/<group>/`` then starts from ``/schema/<group>/<name>``.
"""

from __future__ import annotations

from fedgeo.augment import GGEUR, NoAugment
from fedgeo.classifier import TrainSettings
from fedgeo.clip_features import ClipSource
from fedgeo.datasets import Digits, OfficeCaltechGoogLeNet, OfficeCaltechSURF
from fedgeo.filedata import FileSource
from fedgeo.fl.settings import FLSettings
from fedgeo.fl.strategy.fedavg import FedAvg
from fedgeo.fl.strategy.feddyn import FedDyn
from fedgeo.fl.strategy.fedntd import FedNTD
from fedgeo.fl.strategy.fedopt import FedAdam, FedYogi
from fedgeo.fl.strategy.fedproto import FedProto
from fedgeo.fl.strategy.fedprox import FedProx
from fedgeo.fl.strategy.moon import Moon
from fedgeo.fl.strategy.scaffold import Scaffold
from fedgeo.models import LinearModel, MLPModel
from fedgeo.partitions import DirichletSplit, DomainDirichletSplit, DomainSplit
from fedgeo.synthetic import SyntheticSource

# One entry per class; a class's ``@schema(group, name)`` marks say which options it is.
SCHEMAS: tuple[type, ...] = (
    # dataset, partition, augment
    SyntheticSource, Digits, OfficeCaltechSURF, OfficeCaltechGoogLeNet, FileSource, ClipSource,
    DirichletSplit, DomainSplit, DomainDirichletSplit, NoAugment, GGEUR,
    # classifier, local training, federation
    LinearModel, MLPModel, TrainSettings, FLSettings,
    # federated strategies
    FedAvg, FedProx, Scaffold, FedDyn, Moon, FedNTD, FedProto, FedAdam, FedYogi,
)  # fmt: skip
