"""The reviewer's command: its steps name real presets, and a Hydra multirun resumes as documented."""

from __future__ import annotations

import json
import sys

from runners.hydra_entry import hydra_cli
from runners.moe import main as moe_main
from runners.reproduce import main
from runners.reproduce_steps import STEPS
from tests.conftest import CONF_DIR, REPO


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


STATS = ["mode=stats", "trace=synthetic", "trace.tokens=2000", "trace.preset=mixtral_8x7b"]


def _sweep(sweep, monkeypatch, capsys, *extra) -> str:
    """A real Hydra multirun of ``runners.moe`` over two seeds, in-process; returns its stderr."""
    monkeypatch.setattr(
        sys, "argv", ["runners.moe", "-m", "seed=0,1", f"hydra.sweep.dir={sweep}", *STATS, *extra]
    )
    hydra_cli(moe_main)
    return capsys.readouterr().err


def _events(sweep):
    return {j: (sweep / j / "events.jsonl").read_text() for j in ("0", "1")}


def test_multirun_resume_by_default_in_its_own_folder(tmp_path, monkeypatch, capsys):
    sweep = tmp_path / "sweep"
    _sweep(sweep, monkeypatch, capsys)
    records = {j: json.loads((sweep / j / "result.json").read_text()) for j in ("0", "1")}
    (sweep / "1" / "result.json").write_text('{"schema": "suite.run/1", "sta')  # a job killed mid-write
    before = _events(sweep)
    err = _sweep(sweep, monkeypatch, capsys)  # the same command again: resume=true is the default
    assert _events(sweep)["0"] == before["0"]  # job 0 did not run again
    assert "skipped: a complete record" in err
    redone = json.loads((sweep / "1" / "result.json").read_text())
    assert redone["metrics"] == records["1"]["metrics"]  # re-run, bit-identical numbers
    assert redone["config_hash"] == records["1"]["config_hash"]

    _sweep(sweep, monkeypatch, capsys, "resume=false")  # forces a rerun of every job
    assert _events(sweep)["0"] != before["0"]


def test_nothing_is_taken_from_another_folder_unless_named(tmp_path, monkeypatch, capsys):
    first = tmp_path / "first"
    _sweep(first, monkeypatch, capsys)
    _sweep(tmp_path / "second", monkeypatch, capsys)  # same jobs, another folder: they run
    assert all(
        json.loads((tmp_path / "second" / j / "result.json").read_text())["resumed_from"] is None
        for j in "01"
    )
    err = _sweep(tmp_path / "third", monkeypatch, capsys, f"resume_dir={first}")
    assert "skipped: a complete record" in err
    copied = json.loads((tmp_path / "third" / "0" / "result.json").read_text())
    assert copied["resumed_from"] == str(first / "0" / "result.json")


def test_resume_with_an_empty_resume_dir_runs_everything(tmp_path, monkeypatch, capsys):
    _sweep(tmp_path / "s", monkeypatch, capsys, "resume_dir=/definitely/not/here")
    assert (tmp_path / "s" / "0" / "result.json").exists() and (tmp_path / "s" / "1" / "result.json").exists()


def test_without_shared_data_steps_run_offline_or_skip(tmp_path):
    by_name = {s.name: s for s in STEPS}
    plan, missing = by_name["moe_single_node"].plan(tmp_path)  # an empty folder in place of ../shared
    assert missing and plan == [["experiment=moetuner_single_node", "trace=synthetic"]]
    plan, missing = by_name["moe_trace_stats"].plan(tmp_path)
    assert plan == [["experiment=moetuner_trace_stats"]]  # the real-trace sweep is dropped
    for name in ("ggeur_domain_skew", "ggeur_fl_domain_skew"):  # real features only: nothing to run
        plan, missing = by_name[name].plan(tmp_path)
        assert plan == [] and missing, name
    assert by_name["ggeur_label_skew"].plan(tmp_path) == (by_name["ggeur_label_skew"].sweeps, [])


def test_every_step_that_reads_shared_data_declares_it():
    for step in STEPS:
        names = " ".join(o for sweep in step.sweeps for o in sweep)
        real = "deepseek_v2_lite" in names or "domain_skew" in names
        assert not real or step.data, f"step '{step.name}' reads ../shared but declares no data"


def test_committed_tables_hold_no_wall_clock_metric():
    for step in STEPS:
        assert not [m for m in step.metrics if m.endswith("time_s") and "layer" not in m], step.name
