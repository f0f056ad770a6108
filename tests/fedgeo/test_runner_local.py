"""``python -m runners.fed mode=local``: configs compose, a run writes its record and partition."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from runners.hydra_entry import CONF_DIR

REPO = Path(__file__).resolve().parents[2]
SMALL = [
    "dataset.num_classes=4",
    "dataset.dim=6",
    "dataset.train_per_class=30",
    "dataset.test_per_class=20",
    "partition.clients=3",
    "partition.beta=0.1",
    "augment.target_per_class=40",
    "train.epochs=2",
]


def _run(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "runners.fed", *overrides, f"hydra.run.dir={tmp_path}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "SUITE_PROGRESS": "0"},
    )


def test_configs_compose_with_the_documented_names() -> None:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="fed")
        assert cfg.mode == "local" and cfg.dataset.name == "synthetic" and cfg.partition.method == "dirichlet"
        assert cfg.augment.kind == "ggeur" and cfg.augment.noise_scale == "sqrt"
        for name in ("synthetic", "office_caltech_googlenet", "office_caltech_surf", "digits", "clip"):
            assert compose(config_name="fed", overrides=[f"dataset={name}"]).dataset.name == name
        for name in ("dirichlet", "domain", "domain_dirichlet"):
            assert compose(config_name="fed", overrides=[f"partition={name}"]).partition.method == name
        assert compose(config_name="fed", overrides=["augment=none"]).augment.kind == "none"
        exp = compose(config_name="fed", overrides=["experiment=ggeur_local_domain_skew"])
        assert exp.dataset.name == "digits" and exp.partition.fraction == 0.1


def test_local_run_writes_record_and_partition(tmp_path: Path) -> None:
    proc = _run(tmp_path, "augment=ggeur", *SMALL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = json.loads((tmp_path / "result.json").read_text())
    assert rec["suite"] == "fed" and rec["config"]["augment"]["noise_scale"] == "sqrt"
    assert 0.0 <= rec["metrics"]["acc_local_mean"] <= 1.0
    assert len(rec["series"]["acc_local"]) == 3 and rec["series_step"]["acc_local"] == "client"
    assert rec["metrics"]["acc_local_mean"] == pytest.approx(sum(rec["series"]["acc_local"]) / 3)
    assert rec["metrics"]["n_train_mean"] >= 4 * 40
    part = json.loads((tmp_path / "partition.json").read_text())
    assert len(part["hash"]) == 16 and len(part["counts"]) == 3 and all(min(c) >= 1 for c in part["counts"])
    assert "partition.npz" in rec["artifacts"]


def test_bad_mode_and_bad_beta_fail_clearly(tmp_path: Path) -> None:
    proc = _run(tmp_path / "a", "mode=federated", *SMALL)
    assert proc.returncode == 2 and "config key 'mode'" in proc.stderr and "local" in proc.stderr
    assert not (tmp_path / "a" / "result.json").exists()


@pytest.mark.slow
def test_same_seed_same_numbers_and_partition(tmp_path: Path) -> None:
    recs = []
    for sub in ("x", "y"):
        assert _run(tmp_path / sub, "augment=ggeur", *SMALL).returncode == 0
        recs.append(json.loads((tmp_path / sub / "result.json").read_text()))
    assert recs[0]["series"]["acc_local"] == recs[1]["series"]["acc_local"]
    pa, pb = (json.loads((tmp_path / s / "partition.json").read_text()) for s in ("x", "y"))
    assert pa["hash"] == pb["hash"]
    bad = _run(tmp_path / "z", "partition.beta=-1", *SMALL[:-3])
    assert bad.returncode == 2 and "partition.beta" in bad.stderr


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["office_caltech_googlenet", "office_caltech_surf", "digits"])
def test_real_datasets_run_locally(tmp_path: Path, dataset: str, fl_data) -> None:
    extra = ["partition=domain", "partition.fraction=0.1"] if dataset == "digits" else ["partition.clients=3"]
    proc = _run(
        tmp_path,
        f"dataset={dataset}",
        *extra,
        "augment.target_per_class=50",
        "augment.per_prototype=20",
        "train.epochs=2",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = json.loads((tmp_path / "result.json").read_text())
    assert rec["metrics"]["acc_local_mean"] > 0.2
