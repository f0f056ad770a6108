"""Bad command lines give one ``error:`` line naming the key, exit status 2, and no run record.

The runners are called in-process (``hydra_cli`` with a patched ``sys.argv``): the same code path as the
command line, without starting a Python per case.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import runners.moe_place
from runners import fed as fed_runner
from runners import moe as moe_runner
from runners import serve as serve_runner
from runners.hydra_entry import hydra_cli

RUNNERS = {"runners.moe": moe_runner.main, "runners.fed": fed_runner.main, "runners.serve": serve_runner.main}
QUICK = ("trace=synthetic", "trace.tokens=2000", "eval.batch_tokens=512")


def cli(module: str, *args: str, tmp_path: Path, monkeypatch, capsys) -> tuple[int, list[str]]:
    """Run ``python -m module args`` in-process; returns (exit status, stderr lines)."""
    monkeypatch.setattr(sys, "argv", [module, *args, f"hydra.run.dir={tmp_path / 'run'}"])
    code = 0
    try:
        hydra_cli(RUNNERS[module], module.removeprefix("runners."))
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize(
    ("module", "args", "first_words"),
    [
        (
            "runners.moe",
            ["placement=nope"],
            "error: config group 'placement' has no option 'nope' (choose from: ",
        ),
        (
            "runners.fed",
            ["dataset=nope"],
            "error: config group 'dataset' has no option 'nope' (choose from: ",
        ),
        (
            "runners.moe",
            ["-m", "placement=greedy,nope"],
            "error: config group 'placement' has no option 'nope'",
        ),
        ("runners.moe", ["placement.gapp=0.1"], "error: config key 'placement.gapp' does not exist"),
        (
            "runners.moe",
            ["placement=moetuner_plus", "placement.validate=1"],
            "error: config key 'placement.validate' does not exist (check its spelling; the keys of 'placement' "
            "are those of the chosen option: python -m runners.<suite> placement=<option> --cfg job -p placement)",
        ),
        ("runners.moe", ["placemnt=greedy"], "error: 'placemnt' is neither a config group nor a config key"),
        ("runners.moe", ["no_such_key=1"], "error: 'no_such_key' is neither a config group nor a config key"),
        (
            "runners.moe",
            ["placement_time_limit_s=5"],
            "error: 'placement_time_limit_s' was renamed: use placement.time_limit_s=...",
        ),
        (
            "runners.moe",
            ["placement.gap=abc"],
            "error: config key 'placement.gap': Value 'abc' of type 'str'",
        ),
        ("runners.moe", ["trace=file"], "error: missing required value for config key 'trace.path'"),
        (
            "runners.moe",
            ["mode=fl"],
            "error: config key 'mode': expected one of ['place', 'replan', 'stats']",
        ),
        ("runners.moe", ["-m", "mode=place,nope"], "error: config key 'mode': expected one of ['place', "),
        ("runners.fed", ["mode=federated"], "error: config key 'mode': expected one of ['fl', 'local']"),
        (
            "runners.fed",
            ["dataset=file", "dataset.path=/nonexistent.npz", "fl.rounds=-3"],
            "error: config key 'fl.rounds'",  # refused before the (missing) data is read
        ),
        (
            "runners.serve",
            ["mode=place"],
            "error: config key 'mode': expected one of ['calibrate', 'compare', 'serve']",
        ),
        # no calibrate warning ("measuring on this CPU") before these
        (
            "runners.serve",
            ["mode=calibrate", "calibrate.repeats=-1"],
            "error: config key 'calibrate.repeats'",
        ),
        (
            "runners.serve",
            ["mode=calibrate", "calibrate.token_counts=[0]"],
            "error: config key 'calibrate.token_counts'",
        ),
        (
            "runners.moe",
            ["trace=file", "trace.path=/nonexistent.npz"],
            "error: config key 'trace.path': trace file not found",  # no trace.model warning before it
        ),
        (
            "runners.moe",
            [*QUICK, "placement=moetuner", "placement.gap=-1"],
            "error: config key 'placement.gap'",
        ),
    ],
)
def test_one_error_line_exit_2_no_record(module, args, first_words, tmp_path, monkeypatch, capsys):
    code, err = cli(module, *args, tmp_path=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    assert code == 2
    assert err[-1].startswith(first_words), err[-3:]
    assert len(err) == 1, err  # the error line alone: no warning before it
    assert not (tmp_path / "run" / "result.json").exists()
    assert not (tmp_path / "run" / "partition.npz").exists()


def test_ctrl_c_ends_in_one_line_and_leaves_no_record(tmp_path, monkeypatch, capsys):
    def interrupted(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(runners.moe_place, "evaluate_placement", interrupted)
    code, err = cli(
        "runners.moe", *QUICK, "placement=greedy", tmp_path=tmp_path, monkeypatch=monkeypatch, capsys=capsys
    )
    assert code == 130
    assert err[-1].startswith("error: interrupted (Ctrl-C)")
    assert not any("Traceback" in line for line in err)
    assert not (tmp_path / "run" / "result.json").exists()
    assert not list((tmp_path / "run").glob(".tmp-*"))


def test_quiet_console_one_line_per_job_details_in_events(tmp_path, monkeypatch, capsys):
    code, err = cli(
        "runners.moe", *QUICK, "placement=greedy", tmp_path=tmp_path, monkeypatch=monkeypatch, capsys=capsys
    )
    assert code == 0
    assert len(err) == 1 and err[0].startswith("done: ") and "speedup_vs_contiguous=" in err[0]
    events = (tmp_path / "run" / "events.jsonl").read_text()
    assert '"kind": "log"' in events  # the details the console left out
    code, err = cli(
        "runners.moe",
        "-v",
        *QUICK,
        "placement=greedy",
        tmp_path=tmp_path / "v",
        monkeypatch=monkeypatch,
        capsys=capsys,
    )
    assert code == 0 and len(err) > 5  # -v shows them
