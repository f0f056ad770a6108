"""HiGHS in a worker process, so that a solve's deadline holds even where HiGHS does not poll its clock.

``milp.solve`` sends a PuLP model here as arrays (``highs_model``); ``run_guarded`` runs it in a persistent
child process (``worker_main``) that streams every improving solution and the dual bound back, and kills the
child ``GUARD_GRACE_S`` seconds after the deadline when HiGHS has not stopped by itself. POSIX only (it waits
on pipes with ``select``).
"""

from __future__ import annotations

import atexit
import math
import os
import pickle
import select
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pulp

from moe.placement.milp import INFEASIBLE, NO_SOLUTION, OPTIMAL, TIME_LIMIT

# ---------------------------------------------------------------------------------------------------- HiGHS
# HiGHS runs in a worker process so that its deadline can be enforced. HiGHS checks its ``time_limit`` and
# the interrupt callbacks only between the steps of its root cut loop; one step, the mod-k separator
# (``HighsModkSeparator``, a Gaussian elimination over GF(k)), checks neither and ran 21 s on the ExFlow
# program of the synthetic Mixtral trace (seed 2) started 5.6 s into a 10 s limit. The worker streams every
# improving solution and the dual bound to this process; at ``deadline + GUARD_GRACE_S`` the worker is killed
# and the last streamed solution is returned. A solve that ends in time returns exactly what HiGHS returns.
GUARD_GRACE_S = 0.5  # seconds past the deadline before the worker is killed
_BOUND_EVERY_S = 0.2  # how often the worker reports the MIP dual bound
_FRAME = struct.Struct("<Q")  # length prefix of one pickled message
_TIMEOUT = object()


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


def _write_frame(stream: Any, message: Any) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_FRAME.pack(len(data)) + data)
    stream.flush()


def _read_frame(stream: Any) -> Any:
    """The next message on a blocking stream; ``None`` at end of file."""
    head = stream.read(_FRAME.size)
    if len(head) < _FRAME.size:
        return None
    (size,) = _FRAME.unpack(head)
    data = stream.read(size)
    if len(data) < size:
        return None
    return pickle.loads(data)


class _FrameReader:
    """Reads messages from a pipe's file descriptor with a deadline (``time.monotonic`` seconds)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buf = bytearray()

    def next(self, until: float) -> Any:
        """The next message, ``_TIMEOUT`` when none is complete by ``until``; ``EOFError`` when the pipe
        closes."""
        while True:
            if len(self._buf) >= _FRAME.size:
                (size,) = _FRAME.unpack_from(self._buf)
                if len(self._buf) >= _FRAME.size + size:
                    data = bytes(self._buf[_FRAME.size : _FRAME.size + size])
                    del self._buf[: _FRAME.size + size]
                    return pickle.loads(data)
            wait = until - time.monotonic()
            if wait <= 0:
                return _TIMEOUT
            ready, _, _ = select.select([self._fd], [], [], wait)
            if not ready:
                return _TIMEOUT
            chunk = os.read(self._fd, 1 << 20)
            if not chunk:
                raise EOFError("HiGHS worker closed its pipe")
            self._buf += chunk


class _HighsWorker:
    """A child Python process that runs HiGHS solves (``worker_main``); killed when a solve overruns."""

    def __init__(self) -> None:
        root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from moe.placement.highs_worker import worker_main; worker_main()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            bufsize=0,
        )
        assert self.proc.stdout is not None
        self.reader = _FrameReader(self.proc.stdout.fileno())

    def send(self, message: Any) -> None:
        _write_frame(self.proc.stdin, message)

    def close(self, kill: bool = False) -> None:
        """End the worker: closing its input ends it between solves; ``kill`` ends it at once."""
        if self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                try:
                    assert self.proc.stdin is not None
                    self.proc.stdin.close()
                    self.proc.wait(timeout=2.0)
                except (OSError, subprocess.TimeoutExpired):
                    self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


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


def run_guarded(payload: dict, deadline: float) -> _GuardedRun:
    """Solve ``payload`` in the worker; kill it at ``deadline + GUARD_GRACE_S`` (``time.monotonic``)."""
    global _worker
    t0 = time.monotonic()
    with _worker_lock:
        if _worker is None or _worker.proc.poll() is not None:
            _worker = _HighsWorker()
        worker = _worker
        incumbent: tuple[float, np.ndarray] | None = None
        bound: float | None = None
        try:
            worker.send(("solve", payload))
            while True:
                msg = worker.reader.next(deadline + GUARD_GRACE_S)
                if msg is _TIMEOUT:
                    worker.close(kill=True)
                    _worker = None
                    return _GuardedRun(None, incumbent, bound, time.monotonic() - t0)
                if msg[0] == "incumbent":
                    incumbent = (msg[1], msg[2])
                elif msg[0] == "bound":
                    bound = msg[1]
                elif msg[0] == "done":
                    return _GuardedRun(msg[1], incumbent, bound, time.monotonic() - t0)
                elif msg[0] == "error":
                    raise RuntimeError(f"HiGHS failed in its worker process: {msg[1]}")
        except (EOFError, OSError) as exc:
            code = worker.proc.poll()
            worker.close(kill=True)
            _worker = None
            raise RuntimeError(f"the HiGHS worker process failed during a solve (exit code {code})") from exc


def worker_main() -> None:
    """The worker process: read solve requests on stdin, answer on the original stdout.

    HiGHS's own log (``msg``) goes to stderr so that it cannot mix with the answers.
    """
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    while True:
        msg = _read_frame(sys.stdin.buffer)
        if msg is None:
            return
        try:
            answer = ("done", _worker_solve(msg[1], lambda m: _write_frame(out, m)))
        except Exception as exc:  # reported to the caller, who raises it
            answer = ("error", f"{type(exc).__name__}: {exc}")
        _write_frame(out, answer)


def _worker_solve(payload: dict, send: Any) -> dict:
    """Run one HiGHS solve (in the worker) and report status, objective, bound and values."""
    import highspy

    model: _HighsModel = payload["model"]
    deadline = float(payload["deadline"])
    h = highspy.Highs()
    h.setOptionValue("output_flag", bool(payload["msg"]))
    h.setOptionValue("mip_rel_gap", float(payload["gap"]))
    if payload["abs_gap"] is not None:
        h.setOptionValue("mip_abs_gap", float(payload["abs_gap"]))
    h.setOptionValue("threads", int(payload["threads"]))
    lp = highspy.HighsLp()
    lp.num_col_ = int(model.cost.size)
    lp.num_row_ = int(model.row_lower.size)
    lp.col_cost_ = model.cost
    lp.col_lower_ = np.where(np.isinf(model.col_lower), -highspy.kHighsInf, model.col_lower)
    lp.col_upper_ = np.where(np.isinf(model.col_upper), highspy.kHighsInf, model.col_upper)
    lp.row_lower_ = np.where(np.isinf(model.row_lower), -highspy.kHighsInf, model.row_lower)
    lp.row_upper_ = np.where(np.isinf(model.row_upper), highspy.kHighsInf, model.row_upper)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
    lp.a_matrix_.num_col_ = lp.num_col_
    lp.a_matrix_.num_row_ = lp.num_row_
    lp.a_matrix_.start_ = model.start
    lp.a_matrix_.index_ = model.index
    lp.a_matrix_.value_ = model.value
    if model.integer.any():
        kinds = (highspy.HighsVarType.kContinuous, highspy.HighsVarType.kInteger)
        lp.integrality_ = [kinds[int(flag)] for flag in model.integer]
    h.passModel(lp)
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
