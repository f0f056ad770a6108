"""Ctrl-C during a HiGHS solve: the worker ignores SIGINT, the runner ends it and prints one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]


def _wait_for_worker(pid: int, limit_s: float) -> bool:
    t_end = time.monotonic() + limit_s
    while time.monotonic() < t_end:
        for kid in psutil.Process(pid).children(recursive=True):
            try:
                if "multiprocessing" in " ".join(kid.cmdline()):
                    return True
            except psutil.NoSuchProcess:
                continue
        time.sleep(0.2)
    return False


def _as_foreground_job() -> None:
    """SIGINT at its default in the runner, as in a terminal's foreground job. A test run started in the
    background of a non-interactive shell (``cmd &``, as CI scripts do) ignores SIGINT, every child inherits
    that, and the runner then rightly never sees the Ctrl-C: the run completes with exit 0."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
@pytest.mark.parametrize("attempt", range(3))
def test_ctrl_c_in_a_solve_is_one_line_exit_130(tmp_path: Path, attempt: int) -> None:
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "runners.moe", "trace=synthetic", "trace.preset=deepseek_v2_lite",
           "topology=h100_cluster4x8", "placement=moetuner", "placement.time_limit_s=60",
           f"hydra.run.dir={out}"]  # fmt: skip
    p = subprocess.Popen(
        cmd,
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=_as_foreground_job,
    )
    try:
        assert _wait_for_worker(p.pid, 120), "no HiGHS worker started"
        time.sleep(1.0 + attempt)  # inside the solve
        os.killpg(p.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group
        err = p.communicate(timeout=60)[1]
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    lines = [line for line in err.splitlines() if line.strip()]
    assert p.returncode == 130, err[-2000:]
    assert lines[-1].startswith("error: interrupted (Ctrl-C)") and "Traceback" not in err, err[-2000:]
    assert not (out / "result.json").exists()
    assert (out / "events.jsonl").read_text().splitlines()[-1].endswith('"status": "interrupted"}')
