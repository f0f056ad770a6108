"""Shared PuLP plumbing for the solver-based placements: pick a solver, solve with a gap and a time limit,
read back status, objective, best bound, gap, solve time and problem size.

Two solvers: ``highs`` (the installed ``highspy``, run in a worker process that is killed when HiGHS overruns
its deadline; the best bound is HiGHS's ``mip_dual_bound``) and ``cbc`` (``pulp.PULP_CBC_CMD``, the CBC binary
bundled with PuLP; the best bound is parsed from its log). A bound the solver does not give is reported as
``None``, never invented. Every solve has a time limit, so nothing hangs.
"""

from __future__ import annotations

import math
import re
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pulp

from common.errors import ConfigError
from common.log import get_logger
from moe.placement.deadline import Deadline
from moe.placement.highs_worker import GUARD_GRACE_S, highs_model, run_guarded
from moe.placement.solve_status import FEASIBLE, INFEASIBLE, NO_SOLUTION, OPTIMAL, TIME_LIMIT

SOLVERS = ("highs", "cbc")


@dataclass(frozen=True)
class SolverOptions:
    """How to solve one MILP.

    Attributes:
        solver: ``highs`` or ``cbc``.
        gap: relative gap at which the solver stops, ``(objective - bound) / |objective|`` (0.025 = 2.5%,
            the paper's).
        threads: solver threads (>= 1).
        msg: show the solver's log on the console.
        abs_gap: optional absolute gap (objective units) at which the solver also stops.
    """

    solver: str = "highs"
    gap: float = 0.025
    threads: int = 1
    msg: bool = False
    abs_gap: float | None = None

    def __post_init__(self) -> None:
        if self.solver not in SOLVERS:
            raise ConfigError("solver", f"expected one of {list(SOLVERS)}, got {self.solver!r}")
        if not isinstance(self.gap, int | float) or not 0.0 <= float(self.gap) < 1.0:
            raise ConfigError("gap", f"expected a relative gap in [0, 1), got {self.gap!r}")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1:
            raise ConfigError("threads", f"expected a positive integer, got {self.threads!r}")


@dataclass(frozen=True)
class ProblemSize:
    """Size of a MILP: variables (all, integer), constraints and non-zero coefficients."""

    variables: int
    integer_variables: int
    constraints: int
    nonzeros: int


@dataclass
class SolveResult:
    """What one solve reports.

    ``objective``/``bound``/``gap`` are ``None`` when the solver has no solution / gives no bound.
    ``solve_time_s`` is the solver's wall time (model hand-over included, Python model building excluded).
    """

    status: str
    objective: float | None
    bound: float | None
    gap: float | None
    solve_time_s: float
    size: ProblemSize
    solver: str
    notes: list[str] = field(default_factory=list)

    @property
    def has_solution(self) -> bool:
        return self.status in (OPTIMAL, TIME_LIMIT)

    def to_info(self) -> dict[str, Any]:
        """A JSON-ready dict for ``Placement.info``."""
        out = asdict(self)
        out["size"] = asdict(self.size)
        return out


_SEVERITY = {OPTIMAL: 0, FEASIBLE: 1, "heuristic": 1, TIME_LIMIT: 2}


def placement_status(
    gap: float | None, requested_gap: float, deadline: Deadline, constraints_met: bool = True
) -> str:
    """Status of a whole placement: ``optimal`` (proved within ``requested_gap``, every constraint met),
    ``time_limit`` (its budget ran out: ``deadline`` has expired), else ``feasible``."""
    if gap is not None and gap <= requested_gap and constraints_met:
        return OPTIMAL
    return TIME_LIMIT if deadline.expired() else FEASIBLE


def worst_status(*statuses: str) -> str:
    """The least conclusive of several statuses (``optimal`` < ``feasible`` < ``time_limit`` < others)."""
    return max(statuses, key=lambda s: _SEVERITY.get(s, 3))


def relative_gap(objective: float | None, bound: float | None) -> float | None:
    """``(objective - bound) / |objective|`` for a minimisation, clipped at 0.

    ``None`` when either is unknown, or when the objective is 0 and the bound is below it (undefined).
    Objective equal to bound gives 0 (proved optimal).
    """
    if objective is None or bound is None or not math.isfinite(objective) or not math.isfinite(bound):
        return None
    diff = max(0.0, objective - bound)
    if diff <= 1e-12 * max(1.0, abs(objective)):
        return 0.0
    if abs(objective) <= 1e-12:
        return None
    return diff / abs(objective)


def problem_size(prob: pulp.LpProblem) -> ProblemSize:
    """Count variables, integer variables, constraints and non-zeros of a PuLP problem."""
    variables = prob.variables()
    constraints = prob.constraints()
    return ProblemSize(
        variables=len(variables),
        integer_variables=sum(1 for v in variables if v.cat == pulp.LpInteger),
        constraints=len(constraints),
        nonzeros=sum(len(c) for c in constraints),
    )


# PuLP's (status, solution status) for each of ours, as ``pulp.HiGHS`` sets them.
_PULP_STATUS = {
    OPTIMAL: (pulp.LpStatusOptimal, pulp.LpSolutionOptimal),
    TIME_LIMIT: (pulp.LpStatusOptimal, pulp.LpSolutionIntegerFeasible),
    NO_SOLUTION: (pulp.LpStatusNotSolved, pulp.LpSolutionNoSolutionFound),
    INFEASIBLE: (pulp.LpStatusInfeasible, pulp.LpSolutionInfeasible),
}


def solve(
    prob: pulp.LpProblem, options: SolverOptions, deadline: Deadline, warm_start: bool = False
) -> SolveResult:
    """Solve a minimisation ``prob`` in place (variables get their values) and report how it went.

    Args:
        prob: a PuLP minimisation problem.
        options: solver, gap, threads, messages.
        deadline: stop by its ``end`` (the caller's budget, so that time spent building the model counts);
            at least 0.05 s is always given. HiGHS is stopped within ``GUARD_GRACE_S`` of it whatever phase
            it is in; the solver returns its best solution at the limit.
        warm_start: start from the variables' current values (``var.setInitialValue``); both solvers.

    Returns:
        A ``SolveResult``; on ``TIME_LIMIT``/``OPTIMAL`` the variables hold the best solution found.
    """
    if prob.sense != pulp.LpMinimize:
        raise ValueError("milp.solve: only minimisation problems")
    end = deadline.at_least(0.05).end
    size = problem_size(prob)
    if options.solver == "highs":
        res = _solve_highs(prob, options, end, warm_start, size)
        prob.assignStatus(*_PULP_STATUS[res.status])
        return res
    return _solve_cbc(prob, options, max(0.05, end - time.monotonic()), warm_start, size)


def _result(
    solver: str,
    status: str,
    objective: float | None,
    bound: float | None,
    elapsed_s: float,
    size: ProblemSize,
    notes: list[str],
) -> SolveResult:
    """A ``SolveResult`` with the bound capped at the objective and the gap derived from both."""
    if objective is not None and bound is not None:
        bound = min(bound, objective)
    return SolveResult(
        status=status,
        objective=objective,
        bound=bound,
        gap=relative_gap(objective, bound),
        solve_time_s=round(elapsed_s, 6),
        size=size,
        solver=solver,
        notes=notes,
    )


# ---------------------------------------------------------------------------------------------------- HiGHS


def _solve_highs(
    prob: pulp.LpProblem, options: SolverOptions, deadline: float, warm: bool, size: ProblemSize
) -> SolveResult:
    t0 = time.monotonic()
    model, variables = highs_model(prob, warm)
    payload = {
        "model": model,
        "deadline": deadline,
        "msg": options.msg,
        "gap": options.gap,
        "abs_gap": options.abs_gap,
        "threads": options.threads,
    }
    run = run_guarded(payload, deadline)
    offset = float(prob.objective.constant)  # the objective's constant is not part of the HiGHS model
    notes: list[str] = []
    if run.final is not None:
        status, objective, bound = run.final["status"], run.final["objective"], run.final["bound"]
        values = run.final["values"]
        if status == OPTIMAL and size.integer_variables == 0:
            bound = objective  # an LP solved to optimality: the objective is the bound
        if status == NO_SOLUTION:
            notes.append(f"HiGHS status {run.final['status_text']}")
    else:
        objective, values = run.incumbent if run.incumbent is not None else (None, None)
        bound = run.bound
        status = TIME_LIMIT if values is not None else NO_SOLUTION
        notes.append(
            f"HiGHS did not stop at its time limit (it polls the limit only between steps of its root cut "
            f"loop); stopped {GUARD_GRACE_S} s after the deadline with "
            + ("its best solution so far" if values is not None else "no solution")
        )
    if values is not None:
        for var in variables:
            var.varValue = float(values[var.index])
    objective = None if objective is None else objective + offset
    bound = None if bound is None else bound + offset
    return _result("highs", status, objective, bound, time.monotonic() - t0, size, notes)


# ---------------------------------------------------------------------------------------------------- CBC
_CBC_RESULT = re.compile(r"^Result - (.+)$", re.M)
_CBC_OBJ = re.compile(r"^Objective value:\s+(\S+)", re.M)
_CBC_BOUND = re.compile(r"^Lower bound:\s+(\S+)", re.M)


def _solve_cbc(
    prob: pulp.LpProblem, options: SolverOptions, limit: float, warm: bool, size: ProblemSize
) -> SolveResult:
    with tempfile.TemporaryDirectory(prefix="cbc_") as tmp:
        log_path = Path(tmp) / "cbc.log"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PuLP's v4 deprecation notice for PULP_CBC_CMD
            solver = pulp.PULP_CBC_CMD(
                msg=False,
                gapRel=options.gap,
                gapAbs=options.abs_gap,
                timeLimit=limit,
                threads=options.threads if options.threads > 1 else None,
                warmStart=warm,
                logPath=str(log_path),
            )
        t0 = time.perf_counter()
        pstatus = prob.solve(solver)
        elapsed = time.perf_counter() - t0
        text = log_path.read_text(encoding="utf-8", errors="replace")
    if options.msg:
        get_logger("moe.placement.milp").info(text)
    m_res = _CBC_RESULT.search(text)
    result_line = m_res.group(1).strip() if m_res else ""
    has_primal = prob.sol_status in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible)
    objective = pulp.value(prob.objective) if has_primal else None
    objective = float(objective) if objective is not None else None
    m_bound = _CBC_BOUND.search(text)
    m_obj = _CBC_OBJ.search(text)
    logged = _to_float(m_obj.group(1)) if m_obj else None
    offset = objective - logged if objective is not None and logged is not None else 0.0
    bound: float | None
    if m_bound:
        bound = _to_float(m_bound.group(1))
        bound = None if bound is None else bound + offset
    elif result_line.startswith("Optimal solution found") and objective is not None:
        bound = objective  # CBC prints no "Lower bound" line when the gap closed completely
    else:
        bound = None
    if pstatus == pulp.LpStatusInfeasible or result_line.startswith("Linear relaxation infeasible"):
        status = INFEASIBLE
    elif result_line.startswith("Optimal solution found") and has_primal:
        status = OPTIMAL
    elif has_primal:
        status = TIME_LIMIT
    else:
        status = NO_SOLUTION
    notes = [f"CBC: {result_line}"] if result_line else ["CBC: no result line in the log"]
    return _result("cbc", status, objective, bound, elapsed, size, notes)


def _to_float(text: str) -> float | None:
    try:
        x = float(text)
    except ValueError:
        return None
    return x if math.isfinite(x) else None
