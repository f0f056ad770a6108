"""Start the engine's ranks and end them cleanly: under torchrun, or spawned here when torchrun is absent.

``under_torchrun()``: the environment names this process's rank (torchrun, or a spawned child). Otherwise
``launch_local`` spawns ``engine.nproc`` processes (``torch.multiprocessing``, gloo on 127.0.0.1) and waits;
when one fails the others get ``GRACE_S`` to stop on their own (their collectives fail at once), then are
killed. ``run_rank`` runs one rank and turns any failure into one line on rank 0 (``comm.report_failure``).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch.distributed as dist
import torch.multiprocessing as mp

from common.errors import SuiteError
from common.log import get_logger
from common.threads import limit_threads
from moe.engine.comm import failure_message, is_collective_failure, report_failure

GRACE_S = 10.0
SPAWNED = "MOE_ENGINE_SPAWNED"  # set in ranks that launch_local spawned
PEER_GONE = 3  # rank 0's status when a peer vanished without writing its error
RankFn = Callable[[dict[str, Any], str, list[str]], None]


def under_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def env_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, SuiteError) else f"{type(exc).__name__}: {exc}"


def _exit_failed(rank: int, exc: BaseException) -> None:
    """Rank 0 prints the run's one error line (a peer's, when this failure is a consequence); others report."""
    get_logger("serve").debug("".join(traceback.format_exception(exc)))
    own = _describe(exc)
    if rank == 0:
        peer = failure_message() if is_collective_failure(exc) else None
        if peer is None and is_collective_failure(exc) and os.environ.get(SPAWNED) == "1":
            sys.stdout.flush()
            os._exit(PEER_GONE)  # a peer died without a word: the spawner names it (launch_local)
        line = peer or (own if isinstance(exc, SuiteError) else f"rank 0: {own}")
        print(f"error: {line}", file=sys.stderr, flush=True)
    elif isinstance(exc, SuiteError) or is_collective_failure(exc):
        pass  # every rank has the same input error (rank 0 prints it), or this is a peer's failure
    elif not report_failure(f"rank {rank}: {own}"):
        print(f"error: rank {rank}: {own}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(2)


def run_rank(fn: RankFn, cfg: dict[str, Any], run_dir: str, roots: list[str]) -> None:
    """Run ``fn`` on this rank; any failure exits with status 2 after the one error line on rank 0."""
    limit_threads()
    if env_rank() != 0:
        get_logger().setLevel("WARNING")  # rank 0 tells the story; the others only warn
    try:
        fn(cfg, run_dir, roots)
    except BaseException as exc:  # noqa: BLE001 - every failure ends every rank
        _exit_failed(env_rank(), exc)
    if dist.is_initialized():
        dist.destroy_process_group()


def _child(rank: int, world: int, port: int, fn: RankFn, cfg: dict, run_dir: str, roots: list[str]) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world), **{SPAWNED: "1"},
    )  # fmt: skip
    run_rank(fn, cfg, run_dir, roots)


def launch_local(fn: RankFn, nproc: int, cfg: dict[str, Any], run_dir: str, roots: list[str]) -> int:
    """Run ``nproc`` ranks on this machine; returns 0 when all succeeded, else 2."""
    port = _free_port()
    if nproc == 1:
        _child(0, 1, port, fn, cfg, run_dir, roots)
        return 0
    ctx = mp.start_processes(
        _child, args=(nproc, port, fn, cfg, run_dir, roots), nprocs=nproc, start_method="spawn", join=False
    )
    procs = ctx.processes
    while all(p.is_alive() for p in procs):
        time.sleep(0.1)
    failed = any(p.exitcode not in (0, None) for p in procs)
    deadline = time.monotonic() + (GRACE_S if failed else float("inf"))
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()) if failed else None)
    own = [p.exitcode for p in procs]  # before the kills below: None = still running
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    codes = [p.exitcode for p in procs]
    line = dead_rank_line(own)
    if line:
        print(line, file=sys.stderr, flush=True)
    return 0 if all(c == 0 for c in codes) else 2


def dead_rank_line(codes: list[int | None]) -> str | None:
    """The error line naming the first rank that died (a signal, or a status the ranks never use), if any.

    Statuses 0 and 2 are the ranks' own (success, and failure after rank 0 printed the run's line); rank 0
    exits ``PEER_GONE`` when a peer vanished without writing its error; ``None``: still running when the
    others had stopped (a hung rank, killed by the spawner).
    """
    for r, c in enumerate(codes):
        if c is None:
            continue
        if c < 0:
            name = signal.Signals(-c).name if -c in signal.Signals.__members__.values() else str(-c)
            return f"error: rank {r} died (killed by signal {name}); the other ranks stopped"
        if c not in (0, 2, PEER_GONE):
            return f"error: rank {r} died (exit status {c}); the other ranks stopped"
    stuck = [r for r, c in enumerate(codes) if c is None]
    if stuck and codes[0] in (PEER_GONE, None):  # rank 0 printed nothing: name the rank that hung
        return (f"error: rank {stuck[0]} stopped answering: the other ranks' collectives failed or timed out "
                "waiting for it (engine.timeout_s); the ranks were stopped")  # fmt: skip
    if codes and codes[0] == PEER_GONE:
        return f"error: a rank stopped without reporting an error (exit statuses {codes})"
    return None
