"""``python -m runners.fed``: configs compose, mode=local writes its record and partition, errors are clear."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException

from common.errors import ConfigError
from common.experiment import run_experiment
from runners.fed import body, classifier_model
from tests.fedgeo.conftest import compose_fed

REPO = Path(__file__).resolve().parents[2]
STRATEGIES = sorted(p.stem for p in (REPO / "conf" / "strategy").glob("*.yaml"))  # every option


def test_configs_compose_with_the_documented_names() -> None:
    cfg = compose_fed()
    assert (
        cfg["mode"] == "fl"
        and cfg["dataset"]["name"] == "synthetic"
        and cfg["partition"]["method"] == "dirichlet"
    )
    assert cfg["augment"]["kind"] == "ggeur" and cfg["augment"]["multi_domain"] is None
    assert cfg["strategy"]["name"] == "fedavg" and cfg["model"]["name"] == "linear"
    assert cfg["partition"]["clients"] == cfg["fl"]["clients"] == 10
    for name in ("synthetic", "office_caltech_googlenet", "office_caltech_surf", "digits", "clip"):
        assert compose_fed(f"dataset={name}")["dataset"]["name"] == name
    assert compose_fed("dataset=file", "dataset.path=x.npz")["dataset"]["path"] == "x.npz"
    for name in ("dirichlet", "domain", "domain_dirichlet"):
        assert compose_fed(f"partition={name}")["partition"]["method"] == name
    for name in STRATEGIES:
        assert compose_fed(f"strategy={name}")["strategy"]["name"] == name
    assert compose_fed("augment=none")["augment"]["kind"] == "none"
    assert compose_fed("model=mlp", "model.hidden=8")["model"]["hidden"] == 8
    assert compose_fed("fl.clients=4")["partition"]["clients"] == 4


def test_runner_refuses_a_model_that_is_not_a_classifier() -> None:
    with pytest.raises(ConfigError, match="model.*not a classifier"):
        classifier_model({"_target_": "moe.engine.MixtralTiny", "num_experts": 8})
    assert classifier_model({"_target_": "fedgeo.models.LinearModel"}).name == "linear"


def test_local_run_writes_record_and_partition(fed_run, tmp_path: Path) -> None:
    rec = fed_run("mode=local", "augment=ggeur")
    assert rec.suite == "fed" and rec.config["augment"]["noise_scale"] == "sqrt"
    assert 0.0 <= rec.metrics["acc_local_mean"] <= 1.0 and rec.metrics["multi_domain"] == 0.0
    assert len(rec.series["acc_local"]) == 3 and rec.series_step["acc_local"] == "client"
    assert rec.metrics["acc_local_mean"] == pytest.approx(sum(rec.series["acc_local"]) / 3)
    assert rec.metrics["n_train_mean"] >= 4 * 40 and rec.metrics["ggeur_bytes_up"] > 0
    part = json.loads((tmp_path / "0" / "partition.json").read_text())
    assert len(part["hash"]) == 16 and len(part["counts"]) == 3 and all(min(c) >= 1 for c in part["counts"])
    assert "partition.npz" in rec.artifacts


def test_same_seed_same_numbers_and_partition(fed_run, tmp_path: Path) -> None:
    a, b = fed_run("mode=local"), fed_run("mode=local")
    assert a.series["acc_local"] == b.series["acc_local"]
    pa, pb = (json.loads((tmp_path / s / "partition.json").read_text()) for s in ("0", "1"))
    assert pa["hash"] == pb["hash"]


def test_bad_values_name_the_key(fed_run) -> None:
    with pytest.raises(ConfigError, match="partition.beta"):
        fed_run("mode=local", "partition.beta=-1")
    with pytest.raises(ConfigError, match="augment.cov_clients"):
        fed_run("mode=local", "augment.cov_clients=some")
    with pytest.raises(ConfigCompositionException, match="mode"):
        fed_run("mode=federated")  # the mode group (conf/mode/) has no such option


def test_mode_comes_from_the_mode_group_and_records_its_name(tmp_path: Path) -> None:
    assert compose_fed("mode=local")["mode"] == "local"  # the record keeps the option's name
    cfg = compose_fed()
    for mode in ("federated", "place"):  # unknown; runners.moe's
        with pytest.raises(ConfigError, match=r"config key 'mode': expected one of \['fl', 'local'\]"):
            run_experiment({**cfg, "mode": mode}, "fed", body, run_dir=tmp_path / mode)


@pytest.mark.slow
def test_bad_mode_fails_in_one_line_with_exit_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "runners.fed", "mode=federated", f"hydra.run.dir={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, "SUITE_PROGRESS": "0"},
    )  # fmt: skip
    assert proc.returncode == 2 and "config key 'mode'" in proc.stderr and "local" in proc.stderr
    assert not (tmp_path / "result.json").exists()


def test_user_embeddings_file(fed_run, tmp_path: Path) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    path = tmp_path / "emb.npz"
    X = {f"X_{d}": rng.standard_normal((60, 5)).astype(np.float32) + i for i, d in enumerate(("a", "b"))}
    y = {f"y_{d}": np.arange(60) % 3 for d in ("a", "b")}
    np.savez(path, domains=np.array(["a", "b"]), classes=np.array(["x", "y", "z"]), **X, **y)
    rec = fed_run("mode=local", "dataset=file", f"dataset.path={path}", "partition=domain", small=False)
    assert rec.metrics["num_clients"] == 2 and rec.metrics["multi_domain"] == 1.0
    np.savez(path, X=np.zeros((5, 3)), y=np.array([0, 1, 2, 3, 9]), classes=np.array(["a", "b"]))
    with pytest.raises(Exception, match="labels must lie in 0..C-1"):
        fed_run("mode=local", "dataset=file", f"dataset.path={path}", small=False)


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["office_caltech_googlenet", "office_caltech_surf", "digits"])
def test_real_datasets_run_locally(fed_run, dataset: str, fl_data) -> None:
    extra = ["partition=domain", "partition.fraction=0.1"] if dataset == "digits" else ["fl.clients=3"]
    rec = fed_run(f"dataset={dataset}", "mode=local", *extra, "augment.target_per_class=50",
                  "augment.per_prototype=20", "train.epochs=2", small=False)  # fmt: skip
    assert rec.metrics["acc_local_mean"] > 0.2
