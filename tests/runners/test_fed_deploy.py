"""runners.fed_deploy without starting Flower: loopback-only commands and the cleanup of started processes."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from runners.fed_deploy import _alive, _descendants, _kill, commands


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
        kids = _descendants(p.pid)
        if kids:
            break
        time.sleep(0.05)
    assert kids
    _kill([p])
    assert p.poll() is not None and not any(_alive(k) for k in kids)
