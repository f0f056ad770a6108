"""The statuses a solver-based placement can end in (shared by ``milp`` and its HiGHS worker)."""

from __future__ import annotations

OPTIMAL = "optimal"  # proved within the requested relative gap
TIME_LIMIT = "time_limit"  # stopped at the time limit with a feasible solution
NO_SOLUTION = "no_solution"  # stopped (time limit) without any feasible solution
FEASIBLE = (
    "feasible"  # stopped by itself before its time limit, not proven within the gap (or a constraint relaxed)
)
INFEASIBLE = "infeasible"
