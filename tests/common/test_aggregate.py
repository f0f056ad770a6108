import csv
import json
import math
import subprocess
import sys

import pytest

from common.aggregate import group, load_records, mean_std, to_markdown
from common.errors import RecordError
from common.experiment import RunOutput, run_experiment
from runners.aggregate import main as aggregate_main

VALUES = {("a", 0): 1.0, ("a", 1): 2.0, ("a", 2): 3.0, ("b", 0): 10.0, ("b", 1): 14.0}


@pytest.fixture
def tree(tmp_path):
    """A multirun tree as Hydra lays it out: sweep/<job>/result.json, plus debris a crash leaves."""
    sweep = tmp_path / "multirun" / "2026-01-01" / "12-00-00"
    for job, ((name, seed), v) in enumerate(VALUES.items()):

        def body(ctx, v=v, seed=seed):
            return RunOutput(
                metrics={"time": v, "seed_echo": float(seed)}, series={"curve": [v, v + 1, v + 2]}
            )

        run_experiment({"seed": seed, "placement": {"name": name}}, "moe", body, sweep / str(job))
    (sweep / "9").mkdir()
    (sweep / "9" / ".tmp-result.json.x").write_text("{")  # killed during its write
    (sweep / "10").mkdir()
    (sweep / "10" / "result.json").write_text("{ broken")  # unreadable record
    return tmp_path / "multirun"


def test_group_means_and_stds(tree):
    records, problems = load_records([tree])
    assert len(records) == 5
    assert len(problems) == 1 and "unreadable" in problems[0]
    rows = group(records, ["placement.name"], ["time"])
    assert rows["placement.name"].tolist() == ["a", "b"]
    assert rows["n"].tolist() == [3, 2]
    assert rows["time_mean"].tolist() == pytest.approx([2.0, 12.0])
    assert rows["time_std"].tolist() == pytest.approx([1.0, 8**0.5])
    md = to_markdown(rows, ["placement.name"])
    assert [c.strip() for c in md.splitlines()[2].strip("|").split("|")] == ["a", "3", "2 ± 1"]


def test_one_rule_for_mean_and_std():
    assert mean_std([1.0, None, 3.0, float("nan")]) == (2.0, pytest.approx(2**0.5))
    mean, std = mean_std([5.0])
    assert mean == 5.0 and math.isnan(std)  # undefined for one run, shown without ± in tables
    assert all(math.isnan(x) for x in mean_std([None]))


def test_cli_writes_csv_markdown_and_plots(tree, tmp_path, capsys):
    out = tmp_path / "results" / "table"
    rc = aggregate_main(
        [str(tree), "--by", "placement.name", "--out", str(out), "--bar", "time", "--series", "curve"]
    )
    assert rc == 0
    rows = list(csv.DictReader((tmp_path / "results" / "table.csv").open()))
    assert [(r["placement.name"], r["n"], float(r["time_mean"])) for r in rows] == [
        ("a", "3", 2.0),
        ("b", "2", 12.0),
    ]
    assert (tmp_path / "results" / "table.md").read_text().split("|")[1:3] == [" placement.name   ", " n   "]
    for name in ("table_time.png", "table_curve.png"):
        assert (tmp_path / "results" / name).read_bytes()[:4] == b"\x89PNG"
    assert "| b                | 2   | 12 ± 2.828 |" in capsys.readouterr().out


def test_unknown_group_key_is_named(tree):
    records, _ = load_records([tree])
    with pytest.raises(RecordError, match="'placement.nam'"):
        group(records, ["placement.nam"])


def test_cli_missing_folder_one_line_error(tmp_path, repo_root):
    proc = subprocess.run(
        [sys.executable, "-m", "runners.aggregate", str(tmp_path / "nope"), "--out", str(tmp_path / "t")],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'nope'}: no such folder"
    assert not list(tmp_path.iterdir())


def test_single_run_folder_is_accepted(tree, tmp_path):
    one = next(tree.rglob("result.json")).parent
    records, _ = load_records([one])
    assert len(records) == 1
    assert json.loads((one / "result.json").read_text())["suite"] == "moe"
