"""The reviewer's command: its steps name real presets, and a Hydra multirun resumes as documented."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from runners.reproduce import main
from runners.reproduce_steps import STEPS
from tests.conftest import CONF_DIR, REPO

TINY_FED = [
    "dataset.num_classes=3", "dataset.dim=4", "dataset.train_per_class=20", "dataset.test_per_class=10",
    "partition.clients=2", "augment.target_per_class=25", "train.epochs=1", "train.min_steps=0",
]  # fmt: skip


def test_steps_name_existing_presets_and_runners():
    for step in STEPS:
        assert (REPO / (step.runner.replace(".", "/") + ".py")).exists(), step.runner
        for overrides in step.sweeps:
            for o in overrides:
                if o.startswith("experiment="):
                    assert (CONF_DIR / "experiment" / f"{o.split('=', 1)[1]}.yaml").exists(), o


def test_dry_run_and_unknown_step(capsys):
    assert main(["quick", "--dry-run", "--out", "/nonexistent"]) == 0
    assert main(["quick", "--only", "bogus"]) == 2
    assert "unknown step(s) ['bogus']" in capsys.readouterr().err


def _sweep(sweep, *extra):
    return subprocess.run(
        [sys.executable, "-m", "runners.fed", "-m", "seed=0,1", f"hydra.sweep.dir={sweep}", *TINY_FED, *extra],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_multirun_resume_skips_complete_jobs_and_redoes_a_broken_one(tmp_path):
    sweep = tmp_path / "sweep"
    first = _sweep(sweep)
    assert first.returncode == 0, first.stderr[-2000:]
    records = {j: json.loads((sweep / j / "result.json").read_text()) for j in ("0", "1")}
    (sweep / "1" / "result.json").write_text('{"schema": "suite.run/1", "sta')  # a job killed mid-write
    events_0 = (sweep / "0" / "events.jsonl").read_text()
    again = _sweep(sweep, "resume=true", f"resume_dir={sweep}")
    assert again.returncode == 0, again.stderr[-2000:]
    assert (sweep / "0" / "events.jsonl").read_text() == events_0  # job 0 did not run again
    assert "already complete" in again.stderr
    redone = json.loads((sweep / "1" / "result.json").read_text())

    def numbers(rec):  # every metric but the wall-clock timings (``*_s``)
        return {k: v for k, v in rec["metrics"].items() if not k.endswith("_s")}

    assert numbers(redone) == numbers(records["1"])  # re-run, bit-identical numbers
    assert redone["config_hash"] == records["1"]["config_hash"]


@pytest.mark.parametrize("bad", ["resume_dir=/definitely/not/here"])
def test_resume_with_an_empty_resume_dir_runs_everything(tmp_path, bad):
    proc = _sweep(tmp_path / "s", "resume=true", bad)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "s" / "0" / "result.json").exists() and (tmp_path / "s" / "1" / "result.json").exists()
