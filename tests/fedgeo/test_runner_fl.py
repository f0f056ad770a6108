"""``mode=fl``: Flower ClientApp/ServerApp runs (in-process backend), the GGEUR message exchange, failures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.experiment import run_experiment
from common.log import RunLogger
from fedgeo.augment import GGEUR, ClientData, NoAugment
from fedgeo.classifier import TrainSettings
from fedgeo.federation import client_normalizer, normalized
from fedgeo.fl.client_app import client_file, load_client
from fedgeo.fl.run import run_federated
from fedgeo.fl.settings import FLSettings
from fedgeo.fl.strategy.fedavg import FedAvg
from fedgeo.models import LinearModel
from fedgeo.synthetic import make_synthetic
from runners.fed import body as fed_body
from runners.fed_deploy import body as deploy_body
from runners.hydra_entry import CONF_DIR
from tests.fedgeo.conftest import SMALL, compose_fed


def test_fl_run_records_rounds_bytes_and_accuracy(fed_run) -> None:
    rec = fed_run("mode=fl", "strategy=fedavg", "augment=ggeur")
    m = rec.metrics
    assert 0.0 <= m["acc_final"] <= 1.0 and m["acc_best"] >= m["acc_final"] and m["rounds"] == 2
    assert rec.series["acc"][-1] == m["acc_final"] and rec.series_step["acc"] == "round"
    assert len(rec.series["acc"]) == 2 and all(
        b > 0 for b in rec.series["bytes_up"] + rec.series["bytes_down"]
    )
    assert m["bytes_up_ggeur"] > 0 and m["bytes_down_prepare"] > 0 and m["client_failures"] == 0
    assert "acc_domain0" in rec.series and m["multi_domain"] == 0.0


def test_every_strategy_runs_through_flower(fed_run) -> None:
    finals = {}
    for name in sorted(p.stem for p in (Path(CONF_DIR) / "strategy").glob("*.yaml") if p.stem != "fedavg"):
        rec = fed_run("mode=fl", f"strategy={name}", "augment=none", "fl.rounds=2")
        assert rec.metrics["client_failures"] == 0, name
        finals[name] = rec.metrics["acc_final"]
    assert all(0.0 <= v <= 1.0 for v in finals.values())
    rec = fed_run("mode=fl", "model=mlp", "model.hidden=8", "augment=none")
    assert rec.metrics["rounds"] == 2


def _setup(tmp_path: Path, n_clients: int = 3):
    syn = make_synthetic(num_classes=3, dim=4, num_domains=2, train_per_class=20, test_per_class=10, seed=1)
    tr = syn.train
    owner = np.arange(len(tr)) % n_clients
    raw = [
        ClientData(tr.features[owner == k], tr.labels[owner == k], tr.domains[owner == k])
        for k in range(n_clients)
    ]
    fl = FLSettings(rounds=1, clients=n_clients)
    logger = RunLogger([])
    return syn, raw, fl, logger


def test_ggeur_exchange_through_messages_equals_the_direct_computation(tmp_path: Path) -> None:
    syn, raw, fl, logger = _setup(tmp_path)
    aug = GGEUR(target_per_class=15, multi_domain=True, per_prototype=4)
    out = run_federated(
        raw, syn.test, "standardize", aug, LinearModel(), FedAvg(), TrainSettings(), fl, 5, logger, tmp_path
    )
    norm, _ = client_normalizer("standardize", raw)
    direct, _ = aug.augment_all(normalized(norm, raw), 3, 2, seed=5)
    for k, d in enumerate(direct):
        got = load_client(client_file(tmp_path, k, prepared=True))
        np.testing.assert_allclose(got.features, d.features, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(got.labels, d.labels)
        np.testing.assert_array_equal(got.domains, d.domains)
    assert out.metrics["bytes_up_ggeur"] > 0 and out.metrics["multi_domain"] == 1.0


def test_a_failing_client_is_reported_and_the_round_goes_on(tmp_path: Path) -> None:
    syn, raw, fl, logger = _setup(tmp_path)
    bad = raw[1]
    raw[1] = ClientData(bad.features, np.full_like(bad.labels, 7), bad.domains)  # labels outside 0..2
    out = run_federated(
        raw, syn.test, "none", NoAugment(), LinearModel(), FedAvg(), TrainSettings(), fl, 0, logger, tmp_path
    )
    assert out.metrics["client_failures"] >= 1 and out.metrics["rounds"] == 1
    assert 0.0 <= out.metrics["acc_final"] <= 1.0


@pytest.mark.slow
def test_ray_backend_runs_and_matches_inprocess(fed_run) -> None:
    a = fed_run("mode=fl", "fl.backend=ray", "fl.timeout_s=120")
    b = fed_run("mode=fl", "fl.backend=inprocess")
    assert a.metrics["acc_final"] == b.metrics["acc_final"]


@pytest.mark.slow
def test_deployment_runtime_on_loopback_matches_inprocess(tmp_path: Path) -> None:
    """A real SuperLink, two SuperNodes and ``flwr run`` (``runners.fed_deploy``), all on 127.0.0.1."""
    cfg = compose_fed(*SMALL, "fl.clients=2", "fl.rounds=2", "fl.timeout_s=120", tmp=tmp_path)
    dep = run_experiment(cfg, "fed", deploy_body, run_dir=tmp_path / "deploy")
    ref = run_experiment(cfg, "fed", fed_body, run_dir=tmp_path / "inprocess")
    assert dep.metrics["rounds"] == 2 and dep.metrics["client_failures"] == 0
    assert len(dep.series["acc"]) == 2 and 0.0 <= dep.metrics["acc_final"] <= 1.0
    assert dep.metrics["acc_final"] == ref.metrics["acc_final"]
    assert dep.series["acc"] == ref.series["acc"]
    leftover = [p for p in Path("/proc").glob("[0-9]*/cmdline") if str(tmp_path / "deploy") in _read(p)]
    assert leftover == []


def _read(p: Path) -> str:
    try:
        return p.read_bytes().decode(errors="replace")
    except OSError:
        return ""
