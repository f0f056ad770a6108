"""fedgeo.report: GGEUR-vs-none pairing by seed, per-client wins/losses, the paper-style FL table and plot."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from fedgeo.report import comparison_rows, fed_comparison_table, fl_paper_rows


def local(seed: int, kind: str, clients: list[float], md: float = 0.0) -> dict:
    cfg = {"mode": "local", "dataset": {"name": "synthetic"}, "partition": {"method": "dirichlet", "beta": 0.1},
           "augment": {"kind": kind}}  # fmt: skip
    metrics = {"acc_local_mean": sum(clients) / len(clients), "multi_domain": md}
    return {"suite": "fed", "seed": seed, "config": cfg, "metrics": metrics, "series": {"acc_local": clients}}


def fl(seed: int, strategy: str, kind: str, doms: tuple[float, float], md: float = 1.0) -> dict:
    cfg = {"mode": "fl", "dataset": {"name": "digits"}, "partition": {"method": "domain", "fraction": 0.1},
           "augment": {"kind": kind, "multi_domain": None}, "strategy": {"name": strategy}}  # fmt: skip
    avg = sum(doms) / 2
    metrics = {"acc_final": avg, "acc_domain_avg_final": avg, "acc_usps_final": doms[0],
               "acc_mnist_final": doms[1], "multi_domain": md if kind == "ggeur" else 0.0}  # fmt: skip
    return {"suite": "fed", "seed": seed, "config": cfg, "metrics": metrics,
            "series": {"acc": [avg / 2, avg], "round": [1.0, 2.0]}}  # fmt: skip


def test_local_rows_pair_seeds_and_count_client_wins_and_losses() -> None:
    recs = [
        local(0, "none", [0.5, 0.6, 0.7]), local(0, "ggeur", [0.6, 0.6, 0.5]),
        local(1, "none", [0.5, 0.5, 0.5]), local(1, "ggeur", [0.7, 0.6, 0.4]),
        local(1, "ggeur", [0.9, 0.9, 0.9], md=1.0),  # the multi-domain variant is its own row
    ]  # fmt: skip
    rows = comparison_rows(recs).set_index("method")
    g = rows.loc["ggeur"]
    assert g["acc_none_mean"] == pytest.approx((60 + 50) / 2) and g["seeds_paired"] == 2
    assert g["gain_pts_mean"] == pytest.approx((-10 / 3 + 20 / 3) / 2)
    assert (g["seeds_won"], g["seeds_lost"]) == (1, 1)
    assert (g["client_pairs"], g["clients_won"], g["clients_lost"]) == (6, 3, 2)
    md = rows.loc["ggeur+md"]
    assert md["seeds_paired"] == 1 and md["clients_won"] == 3 and math.isnan(md["acc_ggeur_std"])
    assert "CIFAR-100 FedAvg 68.22" in g["paper_reference"]


def test_fl_table_per_domain_average_and_paper_numbers(tmp_path: Path) -> None:
    recs = [
        fl(0, "fedavg", "none", (0.6, 0.8)), fl(1, "fedavg", "none", (0.7, 0.9)),
        fl(0, "fedavg", "ggeur", (0.8, 0.9)), fl(1, "fedavg", "ggeur", (0.8, 1.0)),
        fl(0, "fedprox", "none", (0.5, 0.5)), fl(0, "fedprox", "ggeur", (0.6, 0.6)),
    ]  # fmt: skip
    table = fl_paper_rows(recs).set_index(["strategy", "arm"])
    base, plus = table.loc[("fedavg", "none")], table.loc[("fedavg", "ggeur+md")]
    assert base["acc_usps"] == pytest.approx(65.0) and base["acc_mnist"] == pytest.approx(85.0)
    assert base["avg"] == pytest.approx(75.0) and plus["avg"] == pytest.approx(87.5)
    assert plus["paper_avg"] == pytest.approx(82.36) and math.isnan(base["paper_avg"])
    assert math.isnan(table.loc[("fedprox", "ggeur+md"), "paper_avg"])
    written = fed_comparison_table(recs, tmp_path)
    names = {p.name for p in written}
    assert names == {"ggeur_comparison.csv", "ggeur_comparison.md", "ggeur_fl_vs_paper.csv",
                     "ggeur_fl_vs_paper.md", "ggeur_fl_domain_wins.csv", "ggeur_fl_domain_wins.md",
                     "ggeur_fl_rounds.png"}  # fmt: skip
    md = (tmp_path / "ggeur_fl_vs_paper.md").read_text()
    assert "+GGEUR+MD" in md and "82.36" in md and "87.50 ± 3.54" in md
    assert (tmp_path / "ggeur_fl_rounds.png").read_bytes()[:4] == b"\x89PNG"


def test_no_fed_record_writes_nothing(tmp_path: Path) -> None:
    assert fed_comparison_table([{"suite": "moe", "config": {}, "metrics": {}}], tmp_path) == []
