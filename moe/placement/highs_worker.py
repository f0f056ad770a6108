"""HiGHS in a worker process, so that a solve's deadline holds even where HiGHS does not poll its clock.

``milp.solve`` sends a PuLP model here as arrays (``highs_model``); ``run_guarded`` runs it in a persistent
child process (``multiprocessing``, spawn start method: the same on Linux, macOS and Windows) that streams
every improving solution and the dual bound back through a pipe, and kills the child ``GUARD_GRACE_S``
seconds after the deadline when HiGHS has not stopped by itself.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import pulp

from moe.placement.solve_status import INFEASIBLE, NO_SOLUTION, OPTIMAL, TIME_LIMIT

# ---------------------------------------------------------------------------------------------------- HiGHS
# HiGHS runs in a worker process so that its deadline can be enforced. HiGHS checks its ``time_limit`` and
# the interrupt callbacks only between the steps of its root cut loop; one step, the mod-k separator
# (``HighsModkSeparator``, a Gaussian elimination over GF(k)), checks neither and ran 21 s on the ExFlow
# program of the synthetic Mixtral trace (seed 2) started 5.6 s into a 10 s limit. The worker streams every
# improving solution and the dual bound to this process; at ``deadline + GUARD_GRACE_S`` the worker is killed
# and the last streamed solution is returned. A solve that ends in time returns exactly what HiGHS returns.
GUARD_GRACE_S = 0.5  # seconds past the deadline before the worker is killed
_BOUND_EVERY_S = 0.2  # how often the worker reports the MIP dual bound


@dataclass
class _HighsModel:
    """A PuLP problem as HiGHS arrays: row-wise matrix ``start [m+1], index [nnz], value [nnz]``, ``cost``,
    ``col_lower``/``col_upper`` ``[n]``, ``row_lower``/``row_upper`` ``[m]`` (``inf`` = unbounded),
    ``integer [n]`` bool, and the warm start ``start_values [n]`` (``None`` without one). Column ``i`` is
    ``prob.variables()[i]``, rows follow ``prob.constraints``: the order ``pulp.HiGHS`` uses."""

    cost: np.ndarray
    col_lower: np.ndarray
    col_upper: np.ndarray
    row_lower: np.ndarray
    row_upper: np.ndarray
    start: np.ndarray
    index: np.ndarray
    value: np.ndarray
    integer: np.ndarray
    start_values: np.ndarray | None


def highs_model(prob: pulp.LpProblem, warm: bool) -> tuple[_HighsModel, list[pulp.LpVariable]]:
    variables = prob.variables()
    n = len(variables)
    cost = np.zeros(n)
    lower = np.full(n, -np.inf)
    upper = np.full(n, np.inf)
    integer = np.zeros(n, dtype=bool)
    for i, var in enumerate(variables):
        var.index = i
        cost[i] = prob.objective.get(var, 0.0)
        if var.lowBound is not None:
            lower[i] = var.lowBound
        if var.upBound is not None:
            upper[i] = var.upBound
        integer[i] = var.cat == pulp.LpInteger
    starts, index, value, row_lo, row_hi = [0], [], [], [], []
    for con in prob.constraints():
        for var, coef in con.items():
            if coef != 0:
                index.append(var.index)
                value.append(coef)
        starts.append(len(index))
        lo, hi = con.getLb(), con.getUb()
        row_lo.append(-np.inf if lo is None else lo)
        row_hi.append(np.inf if hi is None else hi)
    start_values = None
    if warm:
        start_values = np.array([0.0 if v.varValue is None else float(v.varValue) for v in variables])
    model = _HighsModel(
        cost=cost,
        col_lower=lower,
        col_upper=upper,
        row_lower=np.array(row_lo, dtype=float),
        row_upper=np.array(row_hi, dtype=float),
        start=np.array(starts, dtype=np.int32),
        index=np.array(index, dtype=np.int32),
        value=np.array(value, dtype=float),
        integer=integer,
        start_values=start_values,
    )
    return model, variables


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored in this process while the block runs (main thread only; elsewhere a no-op), so that a
    child started in it inherits the ignored disposition from its first instruction."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # Blocked as well as ignored: on Linux a blocked signal stays pending even when ignored, so a Ctrl-C that
    # comes while the child starts is delivered to the restored handler instead of being lost.
    blocked = hasattr(signal, "pthread_sigmask")
    if blocked:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if blocked:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


class _HighsWorker:
    """A child process that runs HiGHS solves (``worker_main``) and answers through a pipe."""

    def __init__(self) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=worker_main, args=(child,), daemon=True, name="highs-worker")
        with _sigint_ignored():  # the child starts with SIGINT ignored (kept across exec), before any import
            self.proc.start()
        child.close()

    def alive(self) -> bool:
        return self.proc.is_alive()

    def next(self, until: float) -> Any:
        """The next message, ``None`` when none arrives by ``until`` (``time.monotonic``); ``EOFError`` when
        the worker is gone."""
        if not self.conn.poll(max(0.0, until - time.monotonic())):
            return None
        return self.conn.recv()

    def close(self, kill: bool = False) -> None:
        """End the worker: a ``stop`` message ends it between solves; ``kill`` ends it at once."""
        if self.proc.is_alive() and not kill:
            try:
                self.conn.send(("stop", None))
                self.proc.join(timeout=2.0)
            except (OSError, EOFError, BrokenPipeError):
                pass
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join()
        self.conn.close()


_worker: _HighsWorker | None = None
_worker_lock = threading.Lock()


def _close_worker() -> None:
    global _worker
    if _worker is not None:
        _worker.close()
        _worker = None


atexit.register(_close_worker)


@dataclass
class _GuardedRun:
    """What a guarded HiGHS run gave: HiGHS's final report (``None`` when the worker was killed), the last
    improving solution ``(objective, values [n])`` and dual bound it streamed, and the seconds it ran."""

    final: dict | None
    incumbent: tuple[float, np.ndarray] | None
    bound: float | None
    elapsed_s: float


def _get_worker() -> _HighsWorker:
    global _worker
    if _worker is None or not _worker.alive():
        _worker = _HighsWorker()
    return _worker


def _drop_worker(worker: _HighsWorker) -> None:
    global _worker
    worker.close(kill=True)
    _worker = None


def run_guarded(payload: dict, deadline: float) -> _GuardedRun:
    """Solve ``payload`` in the worker; kill it at ``deadline + GUARD_GRACE_S`` (``time.monotonic``)."""
    t0 = time.monotonic()
    with _worker_lock:
        worker = _get_worker()
        incumbent: tuple[float, np.ndarray] | None = None
        bound: float | None = None
        try:
            worker.conn.send(("solve", payload))
            while True:
                msg = worker.next(deadline + GUARD_GRACE_S)
                if msg is None:
                    _drop_worker(worker)
                    return _GuardedRun(None, incumbent, bound, time.monotonic() - t0)
                if msg[0] == "incumbent":
                    incumbent = (msg[1], msg[2])
                elif msg[0] == "bound":
                    bound = msg[1]
                elif msg[0] == "done":
                    return _GuardedRun(msg[1], incumbent, bound, time.monotonic() - t0)
                elif msg[0] == "error":
                    raise RuntimeError(f"HiGHS failed in its worker process: {msg[1]}")
        except KeyboardInterrupt:
            _drop_worker(worker)  # the worker ignores SIGINT: end it here, then let the run stop
            raise
        except (EOFError, OSError) as exc:
            code = worker.proc.exitcode
            _drop_worker(worker)
            raise RuntimeError(f"the HiGHS worker process failed during a solve (exit code {code})") from exc


def worker_main(conn: Connection) -> None:
    """The worker process: answer ``("solve", payload)`` requests on ``conn`` until ``("stop", _)`` or EOF.

    HiGHS's own log (``msg``) goes to stderr, with the suite's other diagnostics. The worker ignores
    SIGINT: Ctrl-C reaches the whole process group, and the parent, which gets it too, ends the worker and
    prints the run's one line (a worker that died of it printed its own traceback, or the parent saw a dead
    worker instead of the interrupt and carried on).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.dup2(2, 1)
    while True:
        try:
            kind, payload = conn.recv()
        except EOFError:
            return
        if kind == "stop":
            return
        try:
            answer = ("done", _worker_solve(payload, conn.send))
        except Exception as exc:  # reported to the caller, who raises it
            answer = ("error", f"{type(exc).__name__}: {exc}")
        conn.send(answer)


def _highs_lp(model: _HighsModel) -> Any:
    """``model`` as a ``highspy.HighsLp`` (row-wise matrix, infinite bounds as HiGHS's infinity)."""
    import highspy  # only in the worker: the parent never loads HiGHS

    inf = highspy.kHighsInf
    lp = highspy.HighsLp()
    lp.num_col_ = int(model.cost.size)
    lp.num_row_ = int(model.row_lower.size)
    lp.col_cost_ = model.cost
    lp.col_lower_ = np.where(np.isinf(model.col_lower), -inf, model.col_lower)
    lp.col_upper_ = np.where(np.isinf(model.col_upper), inf, model.col_upper)
    lp.row_lower_ = np.where(np.isinf(model.row_lower), -inf, model.row_lower)
    lp.row_upper_ = np.where(np.isinf(model.row_upper), inf, model.row_upper)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
    lp.a_matrix_.num_col_ = lp.num_col_
    lp.a_matrix_.num_row_ = lp.num_row_
    lp.a_matrix_.start_ = model.start
    lp.a_matrix_.index_ = model.index
    lp.a_matrix_.value_ = model.value
    if model.integer.any():
        kinds = (highspy.HighsVarType.kContinuous, highspy.HighsVarType.kInteger)
        lp.integrality_ = [kinds[int(flag)] for flag in model.integer]
    return lp


def _stream_progress(h: Any, deadline: float, send: Any) -> None:
    """Send improving solutions and (every ``_BOUND_EVERY_S``) the dual bound; interrupt at ``deadline``."""
    import highspy

    cb = highspy.cb.HighsCallbackType
    improving, mip_interrupt = int(cb.kCallbackMipImprovingSolution), int(cb.kCallbackMipInterrupt)
    last_bound = [0.0]

    def on_event(kind: Any, _msg: str, data_out: Any, data_in: Any, _user: Any) -> None:
        now = time.monotonic()
        kind = int(kind)
        if kind == improving:
            send(("incumbent", float(data_out.objective_function_value), np.array(data_out.mip_solution)))
        elif kind == mip_interrupt and now - last_bound[0] >= _BOUND_EVERY_S:
            last_bound[0] = now
            if math.isfinite(data_out.mip_dual_bound):
                send(("bound", float(data_out.mip_dual_bound)))
        if now >= deadline:
            data_in.user_interrupt = True

    h.setCallback(on_event, None)
    for kind in (
        cb.kCallbackMipImprovingSolution,
        cb.kCallbackMipInterrupt,
        cb.kCallbackSimplexInterrupt,
        cb.kCallbackIpmInterrupt,
    ):
        h.startCallback(kind)


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Send file descriptor 1 to the null device for the duration (C libraries write there directly)."""
    sys.stdout.flush()
    saved = os.dup(1)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(null)


def _worker_solve(payload: dict, send: Any) -> dict:
    """Run one HiGHS solve (in the worker) and report status, objective, bound and values."""
    import highspy

    model: _HighsModel = payload["model"]
    deadline = float(payload["deadline"])
    with _quiet_stdout():  # HiGHS prints its banner when constructed, whatever output_flag says later
        h = highspy.Highs()
    h.setOptionValue("output_flag", bool(payload["msg"]))
    h.setOptionValue("mip_rel_gap", float(payload["gap"]))
    if payload["abs_gap"] is not None:
        h.setOptionValue("mip_abs_gap", float(payload["abs_gap"]))
    h.setOptionValue("threads", int(payload["threads"]))
    h.passModel(_highs_lp(model))
    _stream_progress(h, deadline, send)
    if model.start_values is not None:
        sol = highspy.HighsSolution()
        sol.col_value = model.start_values
        sol.value_valid = True
        h.setSolution(sol)
    h.setOptionValue("time_limit", max(0.01, deadline - time.monotonic()))
    h.run()
    ms = h.getModelStatus()
    info = h.getInfo()
    st = highspy.HighsModelStatus
    has_primal = info.primal_solution_status == 2 and math.isfinite(info.objective_function_value)
    by_status = {st.kOptimal: OPTIMAL, st.kInfeasible: INFEASIBLE, st.kUnboundedOrInfeasible: INFEASIBLE}
    return {
        "status": by_status.get(ms, TIME_LIMIT if has_primal else NO_SOLUTION),
        "status_text": h.modelStatusToString(ms),
        "objective": float(info.objective_function_value) if has_primal else None,
        "bound": float(info.mip_dual_bound) if math.isfinite(info.mip_dual_bound) else None,
        "values": np.array(h.getSolution().col_value) if has_primal else None,
    }
