"""fedgeo.report: GGEUR's wins and losses per test domain and seed, the budget label and converged counts."""

from __future__ import annotations

import pytest

from fedgeo.report import budget_label, comparison_rows, domain_win_rows
from tests.fedgeo.test_report import fl


def _labelled(rec: dict, converged: str) -> dict:
    return rec | {"labels": {"converged": converged}}


def test_domain_wins_pair_seeds_per_domain() -> None:
    recs = [
        fl(0, "fedavg", "none", (0.5, 0.8)), fl(0, "fedavg", "ggeur", (0.6, 0.7)),
        fl(1, "fedavg", "none", (0.5, 0.8)), fl(1, "fedavg", "ggeur", (0.7, 0.8)),
    ]  # fmt: skip
    rows = domain_win_rows(recs).set_index("domain")
    usps, mnist = rows.loc["usps"], rows.loc["mnist"]
    assert (usps["won"], usps["lost"], usps["tied"], usps["seeds"]) == (2, 0, 0, 2)
    assert usps["gain_pts_mean"] == pytest.approx(15.0)
    assert (mnist["won"], mnist["lost"], mnist["tied"]) == (0, 1, 1)
    assert mnist["arm"] == "ggeur+md"


def test_budget_label_names_the_rule() -> None:
    assert budget_label({"fl": {"local_budget": "steps", "local_steps": 32}}, "fl") == "steps=32"
    assert budget_label({"fl": {"local_budget": "epochs", "local_epochs": 1}}, "fl") == "epochs=1"
    assert budget_label({"fl": {"min_local_steps": 128}}, "fl") == "steps>=128"  # an older record


def test_converged_runs_are_counted_per_row() -> None:
    recs = [
        _labelled(fl(0, "fedavg", "none", (0.5, 0.8)), "false"),
        _labelled(fl(0, "fedavg", "ggeur", (0.6, 0.7)), "true"),
        _labelled(fl(1, "fedavg", "ggeur", (0.6, 0.7)), "true"),
    ]
    assert comparison_rows(recs)["converged"].tolist() == ["2/3"]
