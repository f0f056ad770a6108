"""The Flower App's wiring (``fedgeo.fl.app``): the run config that carries a run's settings, the components
``flower_app/pyproject.toml`` names, strategy names, and bad ``fl`` values refused before any data is read."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import tomli_w
from flwr.clientapp import ClientApp
from flwr.common.config import flatten_dict, fuse_dicts, parse_config_args
from flwr.serverapp import ServerApp
from flwr.serverapp.strategy import FedAvg as FlowerFedAvg

from common.config import build, registered
from common.errors import ConfigError
from common.experiment import run_experiment
from fedgeo.fl import app
from fedgeo.fl.flower_strategy import SuiteStrategy
from fedgeo.fl.loop import CheckpointPlan
from fedgeo.schemas import SCHEMAS as FEDGEO_SCHEMAS
from fedgeo.synthetic import make_synthetic
from runners.fed import body as fed_body
from runners.fed_deploy import body as deploy_body
from tests.fedgeo.conftest import SMALL, compose_fed

REPO = Path(__file__).resolve().parents[2]
FLOWER_APP = tomllib.loads((REPO / "flower_app" / "pyproject.toml").read_text())["tool"]["flwr"]["app"]


def test_the_flower_app_names_the_apps_and_declares_every_run_config_key() -> None:
    assert FLOWER_APP["components"] == {"serverapp": "fedgeo.fl.app:server_app",
                                        "clientapp": "fedgeo.fl.app:client_app"}  # fmt: skip
    assert isinstance(app.server_app, ServerApp) and isinstance(app.client_app, ClientApp)
    assert FLOWER_APP["config"] == app.RUN_CONFIG
    # the Flower strategy is one module-level class, not one built per run
    assert issubclass(SuiteStrategy, FlowerFedAvg) and SuiteStrategy.__qualname__ == "SuiteStrategy"


def test_run_config_carries_the_runners_settings_and_flower_accepts_it(tmp_path: Path) -> None:
    cfg = compose_fed(*SMALL, "mode=fl", "strategy=fedprox", "strategy.mu=0.2", "augment=ggeur",
                      "fl.lr_candidates=[0.1,0.02]", "fl.faults=[{client: 1, from_round: 2, kind: crash}]",
                      tmp=tmp_path)  # fmt: skip
    test = make_synthetic(
        num_classes=4, dim=6, num_domains=2, train_per_class=5, test_per_class=5, seed=0
    ).test
    plan = CheckpointPlan(str(tmp_path / "checkpoint.npz"), "abc")
    values = app.run_config(cfg, partition_method="dirichlet", normalize="standard", test=test, seed=7,
                            num_clients=3, work=tmp_path, plan=plan)  # fmt: skip
    # Flower takes it as a run config: scalars, declared keys only, unchanged through the TOML file
    assert fuse_dicts(flatten_dict(FLOWER_APP["config"]), values) == values
    (tmp_path / "rc.toml").write_text(tomli_w.dumps(values))
    assert parse_config_args([str(tmp_path / "rc.toml")]) == values
    setup = app.setup_from_run_config(values, "/data")
    for key in ("strategy", "train", "fl"):
        assert getattr(setup, key) == build(cfg[key], key)
    assert setup.strategy.mu == 0.2 and setup.fl.lr_candidates == [0.1, 0.02]
    assert setup.augment == build(cfg["augment"], "augment").resolve("dirichlet")
    assert type(setup.model) is type(build(cfg["model"], "model"))
    assert (setup.normalize, setup.num_classes, setup.num_domains, setup.dim, setup.seed, setup.data_dir) == (
        "standard", 4, 2, 6, 7, "/data")  # fmt: skip
    assert values["checkpoint-file"] == plan.path and values["result-file"] == str(tmp_path / app.RESULT_FILE)


def test_every_strategy_names_itself_by_its_option_and_the_name_is_fixed(tmp_path: Path) -> None:
    strategies = registered(FEDGEO_SCHEMAS, "strategy")
    assert len(strategies) >= 9
    for (_, option), cls in strategies.items():
        assert cls.name == option and "name" not in {f.name for f in dataclasses.fields(cls)}
        node = compose_fed("mode=fl", f"strategy={option}", tmp=tmp_path)["strategy"]
        assert node["name"] == option  # records and tables group by strategy.name
        assert type(build(node, "strategy")) is cls
    with pytest.raises(ConfigError, match=r"strategy\.name.*'fedavg'"):
        build({"name": "fedprox", "_target_": "fedgeo.fl.strategy.fedavg.FedAvg"}, "strategy")


# A dataset whose file does not exist: reading any data would fail with another message.
NO_DATA = ["dataset=file", "dataset.path=/nonexistent/embeddings.npz"]


@pytest.mark.parametrize(
    ("key", "value"),
    [("rounds", -3), ("clients", 0), ("fraction", 1.5), ("lr", 0), ("backend", "gpu"), ("min_reply_fraction", 2),
     ("faults", "[{client: 0, from_round: 1, kind: melt}]")],
)  # fmt: skip
@pytest.mark.parametrize("body", [fed_body, deploy_body], ids=["fed", "fed_deploy"])
def test_bad_fl_values_are_refused_before_any_data_is_read(
    tmp_path: Path, body, key: str, value: object
) -> None:
    cfg = compose_fed("mode=fl", *NO_DATA, f"fl.{key}={value}", tmp=tmp_path)
    with pytest.raises(ConfigError, match=rf"^config key 'fl\.{key}[^']*': expected"):
        run_experiment(cfg, "fed", body, run_dir=tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["events.jsonl"]


def test_a_negative_round_count_is_one_error_line_on_the_command_line(tmp_path: Path) -> None:
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "runners.fed", "mode=fl", "fl.rounds=-3", *NO_DATA, f"hydra.run.dir={run}"]
    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: config key 'fl.rounds': expected a positive integer, got -3"]
    assert not (run / "result.json").exists() and not (run / "partition.npz").exists()
