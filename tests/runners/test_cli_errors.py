"""Bad command lines give one clear error line naming the key, a non-zero exit, and no run record."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO


def run(module: str, *args: str, tmp_path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args, f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.mark.parametrize(
    "module, override, group",
    [("runners.moe", "placement=nope", "placement"), ("runners.fed", "dataset=nope", "dataset")],
)
def test_unknown_group_option(module, override, group, tmp_path):
    proc = run(module, override, tmp_path=tmp_path)
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: config group '{group}' has no option 'nope' (choose from: ")
    assert not (tmp_path / "run" / "result.json").exists()


def test_unknown_option_inside_a_sweep(tmp_path):
    proc = run("runners.moe", "-m", "placement=greedy,nope", tmp_path=tmp_path)
    assert proc.returncode == 2
    assert "'placement' has no option 'nope'" in proc.stderr


def test_missing_required_value_names_the_key(tmp_path):
    proc = run("runners.moe", "trace=file", tmp_path=tmp_path)
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith("error: missing required value for config key 'trace.path'")
    )
    assert not (tmp_path / "run" / "result.json").exists()


def test_unknown_plain_key_is_refused_by_hydra(tmp_path):
    proc = run("runners.moe", "no_such_key=1", tmp_path=tmp_path)
    assert proc.returncode != 0
    assert "no_such_key" in proc.stderr
