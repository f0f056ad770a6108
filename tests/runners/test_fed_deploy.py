"""runners.fed_deploy: loopback-only commands, the cleanup of started processes (without Flower), and (slow)
faults and resume on a real loopback deployment."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest

from common.errors import SuiteError
from common.experiment import run_experiment
from runners.fed import body as fed_body
from runners.fed_deploy import _kill, commands
from runners.fed_deploy import body as deploy_body
from tests.fedgeo.conftest import SMALL, compose_fed


def test_commands_stay_on_loopback_with_one_supernode_per_partition(tmp_path: Path) -> None:
    cmds = commands(tmp_path, 3, 9092, [9100, 9101, 9102])
    assert set(cmds) == {"superlink", "run", "supernode0", "supernode1", "supernode2"}
    link = cmds["superlink"]
    assert link[link.index("--host") + 1] == "127.0.0.1" and "--insecure" in link
    for k in range(3):
        node = cmds[f"supernode{k}"]
        assert node[node.index("--superlink") + 1] == "127.0.0.1:9092"
        assert node[node.index("--host") + 1] == "127.0.0.1" and node[node.index("--port") + 1] == str(
            9100 + k
        )
        assert (
            node[node.index("--node-config") + 1]
            == f"partition-id={k} num-partitions=3 data-dir='{tmp_path}'"
        )
    assert cmds["run"][1:4] == ["run", str(Path(__file__).resolve().parents[2] / "flower_app"), "deploy"]


def test_kill_stops_a_process_and_the_child_it_detached() -> None:
    # The parent starts a child in its own session (as Flower's SuperLink starts flower-superexec).
    p = subprocess.Popen(["bash", "-c", "setsid sleep 60 & wait"], start_new_session=True)
    for _ in range(50):
        kids = psutil.Process(p.pid).children(recursive=True)
        if kids:
            break
        time.sleep(0.05)
    assert kids
    _kill([p])
    assert p.poll() is not None
    assert not any(k.is_running() and k.status() != psutil.STATUS_ZOMBIE for k in kids)


def _deploy(tmp_path: Path, name: str, *overrides: str):
    cfg = compose_fed(*SMALL, "augment=none", *overrides, tmp=tmp_path)
    return run_experiment(cfg, "fed", deploy_body, run_dir=tmp_path / name)


@pytest.mark.slow
def test_deployment_counts_a_crash_and_a_hung_supernode(tmp_path: Path) -> None:
    """Client 1's ClientApp crashes from round 2, client 0's hangs for good in round 3 (as a paused
    SuperNode): the run goes on with the others, counts each round and ends ``degraded``."""
    faults = "fl.faults=[{client:1,from_round:2,kind:crash},{client:0,from_round:3,kind:hang}]"
    rec = _deploy(tmp_path, "d", "fl.rounds=3", "fl.timeout_s=30", faults)
    assert rec.labels["status"] == "degraded" and rec.metrics["rounds"] == 3
    assert rec.series["replies_failed"] == [0.0, 1.0, 1.0]
    assert rec.series["replies_timed_out"] == [0.0, 0.0, 1.0] and rec.series["replies_received"] == [3, 2, 1]


@pytest.mark.slow
def test_deployment_resumes_a_failed_run_to_the_uninterrupted_numbers(tmp_path: Path) -> None:
    """Round 2 fails under ``fl.on_degraded=fail`` (one error line, round 1 checkpointed); ``resume=true``
    on the Deployment Runtime continues from round 1 and ends with the in-process run's numbers."""
    common = ("fl.rounds=3", "fl.timeout_s=60", "strategy=scaffold")
    with pytest.raises(SuiteError, match="round 2 received 2 of 3"):
        _deploy(
            tmp_path,
            "broken",
            *common,
            "fl.faults=[{client:2,from_round:2,kind:crash}]",
            "fl.on_degraded=fail",
        )
    rec = _deploy(tmp_path, "resumed", *common, f"resume_dir={tmp_path / 'broken'}")
    ref = run_experiment(compose_fed(*SMALL, "augment=none", *common, tmp=tmp_path), "fed", fed_body,
                         run_dir=tmp_path / "ref")  # fmt: skip
    assert rec.metrics["resumed_round"] == 1 and rec.labels["status"] == "complete"
    assert rec.series["acc"] == ref.series["acc"] and rec.series["loss"] == ref.series["loss"]


@pytest.mark.slow
def test_deployment_goes_on_when_a_supernode_is_killed(tmp_path: Path) -> None:
    """SuperNode 1 is killed (SIGKILL) once round 1 is checkpointed: the run is not lost; round 2 counts
    its reply as timed out, the run ends ``degraded`` with both rounds, and no process is left behind."""
    deploy = tmp_path / "d" / "deploy"

    def kill_node_1() -> None:
        while not (deploy / "checkpoint.npz").exists():
            time.sleep(0.2)
        for p in Path("/proc").glob("[0-9]*/cmdline"):
            cmd = _read(p).replace("\0", " ")
            if "flower-supernode" in cmd and "partition-id=1 " in cmd and str(deploy) in cmd:
                os.kill(int(p.parent.name), signal.SIGKILL)

    killer = threading.Thread(target=kill_node_1, daemon=True)
    killer.start()
    rec = _deploy(tmp_path, "d", "fl.rounds=2", "fl.timeout_s=30")
    assert rec.labels["status"] == "degraded" and rec.metrics["rounds"] == 2
    assert rec.series["replies_received"] == [3.0, 2.0] and rec.series["replies_timed_out"] == [0.0, 1.0]
    assert [p for p in Path("/proc").glob("[0-9]*/cmdline") if str(deploy) in _read(p)] == []


def _read(p: Path) -> str:
    try:
        return p.read_bytes().decode(errors="replace")
    except OSError:
        return ""
