"""Local training budgets (``fl.local_budget``), aggregation weights (``fl.weight_by``), the convergence flag
and the learning-rate search (``fl.lr_candidates``), through the Flower apps (in-process backend)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

from common.errors import ConfigError, SuiteError
from common.log import RunLogger
from fedgeo.augment import GGEUR, ClientData, NoAugment
from fedgeo.classifier import TrainSettings
from fedgeo.fl.lr_search import holdout_split, pick_lr
from fedgeo.fl.run import run_federated
from fedgeo.fl.settings import FLSettings
from fedgeo.fl.strategy.base import ClientResult
from fedgeo.fl.strategy.fedavg import FedAvg
from fedgeo.fl.training import LocalOpts, minibatches
from fedgeo.models import LinearModel
from fedgeo.synthetic import make_synthetic


def test_steps_budget_takes_exactly_that_many_batches_across_passes() -> None:
    batches = list(minibatches(5, LocalOpts(batch_size=2, steps=7, seed=3)))
    assert len(batches) == 7
    assert [len(b) for b in batches] == [2, 2, 1, 2, 2, 1, 2]  # passes of 3 batches, the third cut short
    assert sorted(torch.cat(batches[:3]).tolist()) == [0, 1, 2, 3, 4]  # a pass visits every row once


def test_epochs_budget_keeps_the_shuffled_passes_of_before() -> None:
    gen = torch.Generator().manual_seed(11)
    expected = [
        o[s : s + 4] for _ in range(3) for o in [torch.randperm(10, generator=gen)] for s in (0, 4, 8)
    ]
    got = list(minibatches(10, LocalOpts(epochs=3, batch_size=4, seed=11)))
    assert len(got) == 9 and all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))


@pytest.mark.parametrize(
    ("key", "value"),
    [("local_budget", "passes"), ("weight_by", "size"), ("local_steps", 0), ("min_loss_drop", 1.0)],
)
def test_bad_budget_settings_name_the_key(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"fl.{key}"):
        FLSettings(**{key: value})


def test_bad_lr_candidates_name_the_key() -> None:
    with pytest.raises(ConfigError, match="fl.lr_candidates"):
        FLSettings(lr_candidates=[0.1, -1.0])


@dataclass(frozen=True)
class RecordingFedAvg(FedAvg):
    """FedAvg that remembers the example counts it was given (in-process backend: same process)."""

    seen: ClassVar[list[list[int]]] = []

    def aggregate(self, global_params, results: list[ClientResult], server_state, num_clients):
        RecordingFedAvg.seen.append([r.num_examples for r in results])
        return super().aggregate(global_params, results, server_state, num_clients)


def _uneven_clients() -> tuple[list[ClientData], object]:
    """Three clients of 6, 15 and 39 rows (3 classes, 4 dims)."""
    syn = make_synthetic(num_classes=3, dim=4, num_domains=1, train_per_class=20, test_per_class=10, seed=2)
    tr = syn.train
    cuts = np.split(np.random.default_rng(0).permutation(len(tr)), [6, 21])
    return [ClientData(tr.features[c], tr.labels[c], tr.domains[c]) for c in cuts], syn.test


def _run(tmp_path: Path, aug, fl: FLSettings, strategy=None):
    raw, test = _uneven_clients()
    return run_federated(raw, test, "standardize", aug, LinearModel(), strategy or FedAvg(),
                         TrainSettings(batch_size=4), fl, 1, RunLogger([]), tmp_path)  # fmt: skip


def test_steps_budget_gives_every_client_the_same_steps(tmp_path: Path) -> None:
    out = _run(
        tmp_path / "s", NoAugment(), FLSettings(rounds=2, clients=3, local_budget="steps", local_steps=5)
    )
    assert out.metrics["local_steps_min"] == out.metrics["local_steps_max"] == 5
    assert out.series["local_steps_max"] == [5, 5]
    ep = _run(tmp_path / "e", NoAugment(), FLSettings(rounds=2, clients=3, local_epochs=1))
    assert (ep.metrics["local_steps_min"], ep.metrics["local_steps_max"]) == (2, 10)  # ceil(6/4), ceil(39/4)


def test_fedavg_weights_by_raw_size_unless_told_augmented(tmp_path: Path) -> None:
    aug = GGEUR(target_per_class=30, min_class_count=1)  # every client ends with 30 rows per local class
    RecordingFedAvg.seen.clear()
    _run(tmp_path / "raw", aug, FLSettings(rounds=1, clients=3), RecordingFedAvg())
    _run(tmp_path / "aug", aug, FLSettings(rounds=1, clients=3, weight_by="augmented"), RecordingFedAvg())
    raw_w, aug_w = RecordingFedAvg.seen
    assert sorted(raw_w) == [6, 15, 39]
    assert all(w >= 30 for w in aug_w) and sorted(aug_w) != sorted(raw_w)


def test_a_stalled_run_is_flagged_and_a_moving_one_is_not(tmp_path: Path) -> None:
    stalled = _run(tmp_path / "a", NoAugment(), FLSettings(rounds=3, clients=3, lr=1e-5))
    assert stalled.labels["converged"] == "false" and stalled.metrics["converged"] == 0.0
    assert abs(stalled.metrics["loss_drop"]) < 0.05
    moving = _run(tmp_path / "b", NoAugment(), FLSettings(rounds=3, clients=3, lr=0.5))
    assert moving.labels["converged"] == "true" and moving.metrics["loss_drop"] > 0.05
    assert moving.metrics["train_loss_last"] < moving.metrics["train_loss_first"]


def test_holdout_split_is_seeded_disjoint_and_never_empty() -> None:
    tr, ho = holdout_split(11, seed=4)
    assert ho.size == 2 and tr.size == 9 and not set(tr) & set(ho)
    assert np.array_equal(holdout_split(11, seed=4)[1], ho)
    assert holdout_split(2, seed=0)[1].size == 1 and holdout_split(1, seed=0)[1].size == 0


def test_pick_lr_weights_clients_and_breaks_ties_to_the_smaller_rate() -> None:
    losses = np.array([[1.0, 0.5, np.inf], [1.0, 2.0, 0.1], [np.nan, np.nan, np.nan]])
    lr, mean = pick_lr(losses, np.array([3.0, 1.0, 0.0]), [0.01, 0.1, 1.0])
    assert lr == 0.1 and mean[0] == 1.0 and mean[1] == pytest.approx(0.875) and mean[2] == np.inf
    assert pick_lr(np.array([[0.3, 0.3]]), np.array([1.0]), [0.5, 0.2])[0] == 0.2
    with pytest.raises(SuiteError, match="fl.lr_candidates"):
        pick_lr(np.array([[1.0]]), np.array([0.0]), [0.1])


def test_lr_search_picks_a_working_rate_and_records_it(tmp_path: Path) -> None:
    fl = FLSettings(rounds=3, clients=3, lr_candidates=[1e-5, 0.5])
    out = _run(tmp_path, NoAugment(), fl)
    assert out.metrics["lr"] == out.metrics["lr_selected"] == 0.5
    assert set(json.loads(out.labels["lr_search"])) == {"1e-05", "0.5"}
    assert out.labels["converged"] == "true" and out.metrics["bytes_up_lrsearch"] > 0


def untuned_file(path: Path) -> Path:
    """A feature file of the issue's kind (4 domains, 400-d, 2 classes, one table with a ``domain`` column):
    per-domain offsets of scale 2 and a weak class direction, so that the default step size diverges."""
    rng = np.random.default_rng(7)
    u = rng.normal(size=400)
    u /= np.linalg.norm(u)
    X, y, dom = [], [], []
    for k in range(4):
        yk = rng.integers(0, 2, 300)
        X.append(
            rng.normal(size=(300, 400)) + rng.normal(scale=2.0, size=400) + np.outer(2 * yk - 1, u) * 0.6
        )
        y.append(yk)
        dom.append(np.full(300, 10 + k))
    np.savez(path, X=np.concatenate(X).astype(np.float32), y=np.concatenate(y), domain=np.concatenate(dom))
    return path


def test_untuned_dataset_is_flagged_and_the_search_recovers(fed_run, tmp_path: Path) -> None:
    f = untuned_file(tmp_path / "untuned.npz")
    common = ("mode=fl", "dataset=file", f"dataset.path={f}", "partition=dirichlet", "augment=none",
              "fl.rounds=10")  # fmt: skip
    plain = fed_run(*common, small=False)
    searched = fed_run(*common, "fl.lr_candidates=[0.01,0.05,0.5]", small=False)
    assert plain.labels["converged"] == "false"
    assert searched.labels["converged"] == "true" and searched.metrics["lr_selected"] == 0.01
    assert searched.metrics["loss_final"] < plain.metrics["loss_final"]
