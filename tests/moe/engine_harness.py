"""Spawn ``world`` gloo ranks of the engine in fresh processes, with a hard overall timeout.

``spawn_ranks(fn, world, args, timeout_s)`` runs ``fn(rank, world, *args)`` in each rank (``fn`` must be a
module-level function) and returns every rank's return value; a rank that raises or a run that exceeds the
timeout fails the test instead of hanging it.
"""

from __future__ import annotations

import os
import pickle
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import torch.multiprocessing as mp

from common.threads import limit_threads


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _child(rank: int, world: int, port: int, out_dir: str, fn: Any, args: tuple) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
    )  # fmt: skip
    limit_threads(1)
    try:
        result: Any = ("ok", fn(rank, world, *args))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        result = ("error", f"{type(exc).__name__}: {exc}")
    Path(out_dir, f"{rank}.pkl").write_bytes(pickle.dumps(result))
    os._exit(0)


def spawn_ranks(fn: Any, world: int, args: tuple = (), timeout_s: float = 60.0) -> list[Any]:
    """Every rank's ``fn`` result; raises ``RuntimeError`` on a rank error, a crash or the timeout."""
    with tempfile.TemporaryDirectory() as out:
        ctx = mp.start_processes(
            _child, args=(world, free_port(), out, fn, args), nprocs=world, start_method="spawn", join=False
        )
        deadline = time.monotonic() + timeout_s
        try:
            for p in ctx.processes:
                p.join(max(0.1, deadline - time.monotonic()))
            alive = [p for p in ctx.processes if p.is_alive()]
            if alive:
                raise RuntimeError(f"{len(alive)} rank(s) still running after {timeout_s} s")
        finally:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
        results = []
        for r in range(world):
            f = Path(out, f"{r}.pkl")
            if not f.is_file():
                raise RuntimeError(f"rank {r} wrote no result (exit code {ctx.processes[r].exitcode})")
            status, value = pickle.loads(f.read_bytes())
            if status != "ok":
                raise RuntimeError(f"rank {r}: {value}")
            results.append(value)
        return results
