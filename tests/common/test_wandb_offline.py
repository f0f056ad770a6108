"""wandb in offline mode writes its run files under the run folder with no network and no login."""

import pytest

from common.experiment import RunOutput, run_experiment


def test_offline_run_writes_files_without_login(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))  # no stored credentials
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there: any call would fail

    def body(ctx):
        for r in range(3):
            ctx.logger.log({"acc": 0.5 + 0.1 * r}, step=r, step_name="round")
        return RunOutput(metrics={"acc": 0.7})

    config = {"seed": 0, "logger": {"kind": "wandb_offline", "project": "test", "group": "sweep-x"}}
    for i in range(2):  # two runs in one process, as in a multirun: each must finish cleanly
        run_experiment(config, "fed", body, tmp_path / str(i), name=f"job{i}")
        runs = list((tmp_path / str(i) / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, runs
        assert list(runs[0].glob("run-*.wandb")), "wandb wrote no run file"
