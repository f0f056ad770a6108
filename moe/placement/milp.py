"""Shared PuLP plumbing for the solver-based placements: pick a solver, solve with a gap and a time limit,
read back status, objective, best bound, gap, solve time and problem size.

Two solvers: ``highs`` (``pulp.HiGHS`` over the installed ``highspy``; the best bound is HiGHS's
``mip_dual_bound``) and ``cbc`` (``pulp.PULP_CBC_CMD``, the CBC binary bundled with PuLP; the best bound is
parsed from its log). A bound the solver does not give is reported as ``None``, never invented. Every solve
has a time limit, so nothing hangs.
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

SOLVERS = ("highs", "cbc")

# Statuses a solve can end in.
OPTIMAL = "optimal"  # proved within the requested relative gap
TIME_LIMIT = "time_limit"  # stopped at the time limit with a feasible solution
NO_SOLUTION = "no_solution"  # stopped (time limit) without any feasible solution
INFEASIBLE = "infeasible"


@dataclass(frozen=True)
class SolverOptions:
    """How to solve one MILP.

    Attributes:
        solver: ``highs`` or ``cbc``.
        gap: relative gap at which the solver stops, ``(objective - bound) / |objective|`` (0.025 = 2.5%,
            the paper's).
        time_limit_s: wall-clock seconds per solve (> 0); the solver returns its best solution at the limit.
        threads: solver threads (>= 1).
        msg: show the solver's log on the console.
        abs_gap: optional absolute gap (objective units) at which the solver also stops.
    """

    solver: str = "highs"
    gap: float = 0.025
    time_limit_s: float = 60.0
    threads: int = 1
    msg: bool = False
    abs_gap: float | None = None

    def __post_init__(self) -> None:
        if self.solver not in SOLVERS:
            raise ConfigError("solver", f"expected one of {list(SOLVERS)}, got {self.solver!r}")
        if not isinstance(self.gap, int | float) or not 0.0 <= float(self.gap) < 1.0:
            raise ConfigError("gap", f"expected a relative gap in [0, 1), got {self.gap!r}")
        if not isinstance(self.time_limit_s, int | float) or not float(self.time_limit_s) > 0:
            raise ConfigError(
                "time_limit_s", f"expected a positive number of seconds, got {self.time_limit_s!r}"
            )
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


def solve(
    prob: pulp.LpProblem,
    options: SolverOptions,
    time_limit_s: float | None = None,
    warm_start: bool = False,
) -> SolveResult:
    """Solve a minimisation ``prob`` in place (variables get their values) and report how it went.

    Args:
        prob: a PuLP minimisation problem.
        options: solver, gap, time limit, threads, messages.
        time_limit_s: overrides ``options.time_limit_s`` (a budget left over from earlier solves); at least
            0.05 s is always given.
        warm_start: start from the variables' current values (``var.setInitialValue``); both solvers.

    Returns:
        A ``SolveResult``; on ``TIME_LIMIT``/``OPTIMAL`` the variables hold the best solution found.
    """
    if prob.sense != pulp.LpMinimize:
        raise ValueError("milp.solve: only minimisation problems")
    limit = float(options.time_limit_s if time_limit_s is None else time_limit_s)
    limit = max(0.05, limit)
    size = problem_size(prob)
    if options.solver == "highs":
        return _solve_highs(prob, options, limit, warm_start, size)
    return _solve_cbc(prob, options, limit, warm_start, size)


# ---------------------------------------------------------------------------------------------------- HiGHS
class _WarmHiGHS(pulp.HiGHS):
    """``pulp.HiGHS`` that can hand the variables' current values to HiGHS as a starting solution."""

    def __init__(self, warm_start: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._warm = warm_start
        self._t0 = time.perf_counter()

    def buildSolverModel(self, lp: pulp.LpProblem) -> None:  # noqa: N802 - PuLP's name
        self._t0 = time.perf_counter()
        super().buildSolverModel(lp)

    def callSolver(self, lp: pulp.LpProblem) -> None:  # noqa: N802 - PuLP's name
        if self.timeLimit is not None:  # the hand-over to HiGHS counts against the limit
            spent = time.perf_counter() - self._t0
            left = max(0.01, float(self.timeLimit) - spent)
            lp.solverModel.setOptionValue("time_limit", left)
            _interrupt_at(lp.solverModel, time.perf_counter() + left)
        if self._warm:
            import highspy

            variables = lp.variables()
            idx = [v.index for v in variables if v.varValue is not None]
            val = [float(v.varValue) for v in variables if v.varValue is not None]
            if idx:
                sol = highspy.HighsSolution()
                col = [0.0] * len(variables)
                for i, x in zip(idx, val, strict=True):
                    col[i] = x
                sol.col_value = col
                sol.value_valid = True
                lp.solverModel.setSolution(sol)
        super().callSolver(lp)


def _interrupt_at(model: Any, deadline: float) -> None:
    """Ask HiGHS to stop at ``deadline`` from its simplex and MIP interrupt callbacks too.

    HiGHS checks ``time_limit`` only between phases; its root cut loop can overrun the limit severalfold on a
    busy machine. The callbacks are polled inside the LP iterations, so the limit holds.
    """
    import highspy

    def stop(_kind: Any, _msg: str, _out: Any, data_in: Any, _user: Any) -> None:
        if time.perf_counter() >= deadline:
            data_in.user_interrupt = True

    model.setCallback(stop, None)
    model.startCallback(highspy.cb.HighsCallbackType.kCallbackSimplexInterrupt)
    model.startCallback(highspy.cb.HighsCallbackType.kCallbackMipInterrupt)


def _solve_highs(
    prob: pulp.LpProblem, options: SolverOptions, limit: float, warm: bool, size: ProblemSize
) -> SolveResult:
    import highspy

    solver = _WarmHiGHS(
        warm_start=warm,
        msg=options.msg,
        gapRel=options.gap,
        gapAbs=options.abs_gap,
        timeLimit=limit,
        threads=options.threads,
    )
    t0 = time.perf_counter()
    prob.solve(solver)
    elapsed = time.perf_counter() - t0
    model = prob.solverModel
    ms = model.getModelStatus()
    info = model.getInfo()
    offset = float(prob.objective.constant)  # PuLP does not pass the objective's constant to HiGHS
    has_primal = info.primal_solution_status == 2 and math.isfinite(info.objective_function_value)
    objective = float(info.objective_function_value) + offset if has_primal else None
    bound = float(info.mip_dual_bound) + offset if math.isfinite(info.mip_dual_bound) else None
    if size.integer_variables == 0 and ms == highspy.HighsModelStatus.kOptimal:
        bound = objective  # an LP solved to optimality: the objective is the bound
    st = highspy.HighsModelStatus
    if ms == st.kOptimal:
        status = OPTIMAL
    elif ms in (st.kInfeasible, st.kUnboundedOrInfeasible):
        status = INFEASIBLE
    elif has_primal:
        status = TIME_LIMIT
    else:
        status = NO_SOLUTION
    if objective is not None and bound is not None:
        bound = min(bound, objective)
    notes = [] if status != NO_SOLUTION else [f"HiGHS status {model.modelStatusToString(ms)}"]
    return SolveResult(
        status=status,
        objective=objective,
        bound=bound,
        gap=relative_gap(objective, bound),
        solve_time_s=round(elapsed, 6),
        size=size,
        solver="highs",
        notes=notes,
    )


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
        from common.log import get_logger

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
    if objective is not None and bound is not None:
        bound = min(bound, objective)
    notes = [f"CBC: {result_line}"] if result_line else ["CBC: no result line in the log"]
    return SolveResult(
        status=status,
        objective=objective,
        bound=bound,
        gap=relative_gap(objective, bound),
        solve_time_s=round(elapsed, 6),
        size=size,
        solver="cbc",
        notes=notes,
    )


def _to_float(text: str) -> float | None:
    try:
        x = float(text)
    except ValueError:
        return None
    return x if math.isfinite(x) else None
