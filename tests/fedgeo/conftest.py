"""Shared fixtures of the fedgeo tests: the real FL data folder (skip when absent) and small fed runs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from common.experiment import run_experiment
from common.records import RunRecord
from runners.fed import body
from runners.hydra_entry import CONF_DIR, to_plain

FL_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "fl"

# A tiny federation that trains in well under a second per run: 4 classes, 6 dims, 3 clients.
SMALL = [
    "dataset.num_classes=4",
    "dataset.dim=6",
    "dataset.train_per_class=30",
    "dataset.test_per_class=20",
    "fl.clients=3",
    "partition.beta=0.1",
    "train.epochs=2",
    "train.min_steps=20",
    "fl.rounds=2",
]


@pytest.fixture
def fl_data() -> Path:
    """The real FL data folder; the test skips with the reason when it is missing."""
    if not (FL_DATA / "README.md").is_file():
        pytest.skip(f"real FL data not found at {FL_DATA.resolve()} (../shared/data/fl)")
    return FL_DATA


def compose_fed(*overrides: str, tmp: Path | None = None) -> dict:
    """``conf/fed.yaml`` composed in-process with ``overrides`` (paths pointed at the shared data)."""
    paths = [f"paths.fl_data={FL_DATA.resolve()}", f"paths.feature_cache={tmp or '/tmp'}/cache"]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="fed", overrides=[*paths, *overrides])
    return to_plain(cfg)


@pytest.fixture
def fed_run(tmp_path: Path) -> Callable[..., RunRecord]:
    """``fed_run("mode=local", ...)``: one small run in this process, its record (folder ``tmp_path/<n>``)."""
    counter = iter(range(1000))

    def run(*overrides: str, small: bool = True) -> RunRecord:
        cfg = compose_fed(*(SMALL if small else []), *overrides, tmp=tmp_path)
        return run_experiment(cfg, "fed", body, run_dir=tmp_path / str(next(counter)))

    return run
