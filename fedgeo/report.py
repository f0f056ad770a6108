"""GGEUR tables from ``runners.fed`` run-record dicts (pandas): GGEUR vs none, and the paper-style FL table.

``comparison_rows``: one row per (mode, dataset, partition setting, strategy, method), ``method`` being
``ggeur`` or ``ggeur+md`` (GGEUR with the multi-domain prototype step): mean ± std over seeds
(``common.aggregate.mean_std``) of the accuracy without GGEUR (``augment=none`` of the same setting and
strategy) and with it, the gain in points, how many seeds won and lost, and, for ``mode=local`` (whose
records hold every client's accuracy as the series ``acc_local``), how many (client, seed) pairs won and
lost. Accuracy is ``acc_local_mean`` for ``mode=local`` and ``acc_final`` for ``mode=fl``.

``fl_paper_rows``: ``mode=fl`` only, laid out as the paper's tables: per (dataset, setting, strategy,
arm), the final accuracy per test domain and their unweighted average, next to the paper's numbers where
the paper has a comparable one (Office-Home-LDS averages per strategy next to ``partition=domain_dirichlet``,
Digits FedAvg+GGEUR 82.36 next to Digits under ``partition=domain``, CIFAR-100 FedAvg next to
``partition=dirichlet`` at the same beta). The paper used CLIP features of other datasets: its numbers are
for scale, not a target. ``fl_round_plot`` draws the global test accuracy per round (mean ± std over seeds).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from common.aggregate import mean_std
from common.atomic import atomic_write_text
from common.plots import line_plot

# The paper's accuracies (%), base -> +GGEUR (papers.md section 3, unverified there).
PAPER_LABEL_SKEW = {0.5: (81.41, 83.31), 0.1: (68.22, 77.70), 0.01: (58.71, 75.72)}  # CIFAR-100, FedAvg
PAPER_DIGITS_GGEUR = 82.36  # FedAvg + GGEUR, Digits, unweighted average over the four domains
PAPER_OFFICE_HOME_LDS = {  # beta 0.1, unweighted average over the four domains; FedOpt for fedadam/fedyogi
    "fedavg": (70.14, 83.99), "scaffold": (74.82, 83.96), "moon": (76.83, 78.08), "feddyn": (65.99, 84.09),
    "fedadam": (65.59, 84.20), "fedyogi": (65.59, 84.20), "fedntd": (75.46, 82.46), "fedproto": (69.40, 83.35),
}  # fmt: skip

CSV_NAME, MD_NAME = "ggeur_comparison.csv", "ggeur_comparison.md"
FL_CSV_NAME, FL_MD_NAME, FL_PLOT_NAME = "ggeur_fl_vs_paper.csv", "ggeur_fl_vs_paper.md", "ggeur_fl_rounds.png"
WINS_CSV_NAME, WINS_MD_NAME = "ggeur_fl_domain_wins.csv", "ggeur_fl_domain_wins.md"
KEYS = ["mode", "dataset", "partition", "setting", "strategy", "budget"]
METRIC = {"local": "acc_local_mean", "fl": "acc_final"}
DOMAIN_AVG = {"local": "acc_local_domain_avg", "fl": "acc_domain_avg_final"}


def _setting(part: Mapping[str, Any]) -> str:
    if part.get("method") in ("dirichlet", "domain_dirichlet"):
        return f"beta={part.get('beta')}"
    return f"fraction={part.get('fraction')}"


def budget_label(cfg: Mapping[str, Any], mode: str) -> str:
    """How far each client trains, so that rows with different budgets are told apart: ``mode=fl``:
    ``epochs=E`` (the paper's rule: an augmented client takes more steps) or ``steps=N`` per round
    (``fl.local_budget=steps``: every client exactly N SGD steps); ``mode=local``: ``steps>=N``
    (``train.min_steps``)."""
    if mode == "fl":
        fl = cfg.get("fl") or {}
        if fl.get("local_budget") == "steps":
            return f"steps={int(fl.get('local_steps') or 0)}"
        n = int(fl.get("min_local_steps") or 0)  # records written before fl.local_budget existed
        return f"steps>={n}" if n else f"epochs={fl.get('local_epochs', 1)}"
    return f"steps>={int((cfg.get('train') or {}).get('min_steps') or 0)}"


def arm_label(cfg: Mapping[str, Any], metrics: Mapping[str, Any]) -> str:
    """``none``, ``ggeur`` or ``ggeur+md``: the run's multi-domain flag (``metrics.multi_domain``, what ran)
    before the config's (which may be ``null``, resolved from the partition)."""
    kind = str((cfg.get("augment") or {}).get("kind", "none"))
    if kind != "ggeur":
        return kind
    md = metrics.get("multi_domain", (cfg.get("augment") or {}).get("multi_domain"))
    return "ggeur+md" if md else "ggeur"


def records_frame(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per ``runners.fed`` record: the keys, ``arm``, ``seed``, ``acc``, ``acc_domain_avg``, every
    ``acc_<domain>_final``, the per-client accuracies ``clients`` (``mode=local``) and the per-round ``curve``."""
    rows = []
    for rec in records:
        cfg, metrics = rec.get("config") or {}, rec.get("metrics") or {}
        mode = str(cfg.get("mode", "local"))
        if rec.get("suite") != "fed" or mode not in METRIC or metrics.get(METRIC[mode]) is None:
            continue
        part = cfg.get("partition") or {}
        series = rec.get("series") or {}
        rows.append({
            "mode": mode, "dataset": str((cfg.get("dataset") or {}).get("name", "?")),
            "partition": str(part.get("method", "?")), "setting": _setting(part),
            "strategy": str((cfg.get("strategy") or {}).get("name", "-")) if mode == "fl" else "-",
            "budget": budget_label(cfg, mode),
            "arm": arm_label(cfg, metrics), "seed": int(rec.get("seed", 0)),
            "status": str((rec.get("labels") or {}).get("status", "complete")),
            "acc": float(metrics[METRIC[mode]]), "acc_domain_avg": metrics.get(DOMAIN_AVG[mode]),
            "converged": (rec.get("labels") or {}).get("converged", "n/a"),
            "clients": list(series.get("acc_local") or []), "curve": list(series.get("acc") or []),
            **{k: v for k, v in metrics.items() if k.startswith("acc_") and k.endswith("_final")},
        })  # fmt: skip
    return pd.DataFrame(rows)


def seed_gains(none: pd.DataFrame, arm: pd.DataFrame, col: str) -> list[float]:
    """``arm`` minus ``none`` in column ``col`` (points: 100 x the fractions) on every seed both have, in
    seed order."""
    a, b = none.set_index("seed"), arm.set_index("seed")
    return [100 * (b.at[s, col] - a.at[s, col]) for s in sorted(set(a.index) & set(b.index))]


def fl_frame(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """``records_frame`` of the ``mode=fl`` records only (empty when there is none)."""
    frame = records_frame(records)
    return frame[frame["mode"] == "fl"] if not frame.empty else frame


def _pairs(none: pd.DataFrame, arm: pd.DataFrame) -> dict[str, Any]:
    """Gains of ``arm`` over ``none`` on the seeds both have, and per-client wins/losses (same client)."""
    a, b = none.set_index("seed"), arm.set_index("seed")
    seeds = sorted(set(a.index) & set(b.index))
    gains = seed_gains(none, arm, "acc")
    diffs = [y - x for s in seeds for x, y in zip(a.at[s, "clients"], b.at[s, "clients"], strict=False)]
    g_mean, g_std = mean_std(gains)
    out = {"gain_pts_mean": g_mean, "gain_pts_std": g_std, "seeds_paired": len(seeds),
           "seeds_won": sum(g > 0 for g in gains), "seeds_lost": sum(g < 0 for g in gains)}  # fmt: skip
    if diffs:
        out |= {"client_pairs": len(diffs), "clients_won": sum(d > 0 for d in diffs),
                "clients_lost": sum(d < 0 for d in diffs)}  # fmt: skip
    return out


def comparison_rows(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """The GGEUR-vs-none table (see the module docstring); empty when no ``runners.fed`` record."""
    frame = records_frame(records)
    if frame.empty:
        return frame
    rows = []
    for key, cell in frame.groupby(KEYS, sort=True):
        none = cell[cell["arm"] == "none"]
        for arm, sub in cell[cell["arm"] != "none"].groupby("arm", sort=True):
            row = dict(zip(KEYS, key, strict=True)) | {"method": arm}
            for name, part in (("none", none), ("ggeur", sub)):
                row[f"acc_{name}_mean"], row[f"acc_{name}_std"] = mean_std(100 * part["acc"])
                row[f"seeds_{name}"] = int(part["seed"].nunique())
            row |= _pairs(none, sub) if not none.empty else {}
            row["converged"] = converged_count(pd.concat([none, sub]))
            row["paper_reference"] = paper_reference(row["dataset"], row["partition"], row["setting"],
                                                     row["strategy"])  # fmt: skip
            rows.append(row)
    return pd.DataFrame(rows)


def converged_count(runs: pd.DataFrame) -> str:
    """``"k/n"``: how many of the ``n`` runs were recorded ``converged=true`` (records without the label,
    ``mode=local`` ones, count as ``n/a`` and give ``""``)."""
    known = runs[runs["converged"].isin(["true", "false"])]
    return f"{int((known['converged'] == 'true').sum())}/{len(known)}" if len(known) else ""


def paper_reference(dataset: str, partition: str, setting: str, strategy: str) -> str:
    """The paper's comparable number as text ("" where it has none)."""
    beta = _beta(setting)
    if partition == "dirichlet" and beta in PAPER_LABEL_SKEW and strategy in ("fedavg", "-"):
        a, b = PAPER_LABEL_SKEW[beta]
        return f"CIFAR-100 FedAvg {a:.2f} -> {b:.2f} (+{b - a:.2f})"
    if dataset == "digits" and partition == "domain" and strategy in ("fedavg", "-"):
        return f"Digits FedAvg+GGEUR {PAPER_DIGITS_GGEUR:.2f}"
    if partition == "domain_dirichlet" and strategy in PAPER_OFFICE_HOME_LDS:
        a, b = PAPER_OFFICE_HOME_LDS[strategy]
        return f"Office-Home-LDS {strategy} {a:.2f} -> {b:.2f}"
    return ""


def _beta(setting: str) -> float | None:
    try:
        return float(setting.split("=", 1)[1]) if setting.startswith("beta=") else None
    except ValueError:
        return None


def _ms(mean: float, std: float) -> str:
    if math.isnan(mean):
        return ""
    return f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"


def comparison_markdown(table: pd.DataFrame) -> str:
    shown = table[[*KEYS, "method"]].copy()
    shown["acc none (%)"] = [
        _ms(m, s) for m, s in zip(table["acc_none_mean"], table["acc_none_std"], strict=True)
    ]
    shown["acc method (%)"] = [
        _ms(m, s) for m, s in zip(table["acc_ggeur_mean"], table["acc_ggeur_std"], strict=True)
    ]
    if "gain_pts_mean" in table:
        shown["gain (pts)"] = [
            _ms(m, s) for m, s in zip(table["gain_pts_mean"], table["gain_pts_std"], strict=True)
        ]
        shown["seeds won/lost"] = [
            _won_lost(r, "seeds_won", "seeds_lost", "seeds_paired") for _, r in table.iterrows()
        ]
    if "client_pairs" in table:
        shown["clients won/lost"] = [
            _won_lost(r, "clients_won", "clients_lost", "client_pairs") for _, r in table.iterrows()
        ]
    if table["converged"].astype(bool).any():
        shown["converged"] = table["converged"]
    shown["paper (for scale)"] = table["paper_reference"]
    note = ("Accuracy: mode=local the mean over clients of per-client classifiers, mode=fl the global model "
            "after the last round; won/lost counts seeds (and client/seed pairs) where the method beat / "
            "lost to augment=none, of the pairs shown last; converged: runs of the row (both arms) whose "
            "training loss fell by at least fl.min_loss_drop.")  # fmt: skip
    return f"{note}\n\n{shown.to_markdown(index=False, disable_numparse=True)}\n"  # fmt: skip


def _won_lost(row: pd.Series, won: str, lost: str, total: str) -> str:
    n = row.get(total)
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return ""
    return f"{int(row[won])}/{int(row[lost])} of {int(n)}"


def paper_average(dataset: str, partition: str, setting: str, strategy: str, arm: str) -> tuple[float, str]:
    """The paper's comparable average accuracy (%) for one FL row, and what it is; ``(nan, "")`` if none."""
    with_ggeur = arm != "none"
    beta = _beta(setting)
    if partition == "dirichlet" and beta in PAPER_LABEL_SKEW and strategy == "fedavg":
        return PAPER_LABEL_SKEW[beta][with_ggeur], f"CIFAR-100 beta={beta}"
    if dataset == "digits" and partition == "domain" and strategy == "fedavg" and with_ggeur:
        return PAPER_DIGITS_GGEUR, "Digits"
    if partition == "domain_dirichlet" and strategy in PAPER_OFFICE_HOME_LDS:
        return PAPER_OFFICE_HOME_LDS[strategy][with_ggeur], "Office-Home-LDS beta=0.1"
    return math.nan, ""


def domain_columns(frame: pd.DataFrame) -> list[str]:
    """The per-domain final-accuracy columns (``acc_<domain>_final``), in order of appearance."""
    skip = {"acc_final", "acc_domain_avg_final"}
    return [c for c in frame.columns if c.startswith("acc_") and c.endswith("_final") and c not in skip]


def fl_paper_rows(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """``mode=fl`` rows as the paper lays them out: per (dataset, partition, setting, strategy, arm), the
    final accuracy (%) per domain and their unweighted average (mean over seeds; ``avg_std``), overall
    accuracy, seeds, ``degraded`` (runs labelled ``status=degraded``: a round below ``fl.min_reply_fraction``),
    and ``paper_avg`` / ``paper_source``. Empty when no ``mode=fl`` record."""
    frame = fl_frame(records)
    if frame.empty:
        return pd.DataFrame()
    doms = domain_columns(frame)
    keys = ["dataset", "partition", "setting", "strategy", "budget", "arm"]
    grouped = frame.groupby(keys, sort=True)
    table = grouped["seed"].nunique().rename("seeds").to_frame()
    table["converged"] = grouped.apply(converged_count, include_groups=False)
    table["degraded"] = grouped["status"].agg(
        lambda v: int((v == "degraded").sum())
    )  # runs below fl.min_reply_fraction
    for col in [*doms, "acc_domain_avg", "acc"]:
        stats = grouped[col].agg(lambda v: mean_std(100 * pd.to_numeric(v)))
        name = {"acc_domain_avg": "avg", "acc": "acc_overall"}.get(col, col.removesuffix("_final"))
        table[name] = [s[0] for s in stats]
        if col == "acc_domain_avg":
            table["avg_std"] = [s[1] for s in stats]
    table = table.reset_index()
    cols = ["dataset", "partition", "setting", "strategy", "arm"]
    paper = [paper_average(*vals) for vals in table[cols].itertuples(index=False)]
    table["paper_avg"] = [p[0] for p in paper]
    table["paper_source"] = [p[1] for p in paper]
    return table


def fl_paper_markdown(table: pd.DataFrame) -> str:
    """One Markdown table per dataset (its own domains as columns), base and +GGEUR rows per strategy."""
    note = ("Final global test accuracy (%) per domain and their unweighted average (mean ± std over seeds); "
            "+GGEUR+MD is GGEUR with the multi-domain prototype step. paper_avg is the paper's number for "
            "paper_source (CLIP features of another dataset): for scale only.")  # fmt: skip
    parts = [note]
    for dataset, sub in table.groupby("dataset", sort=True):
        shown = sub.dropna(axis=1, how="all").copy()
        shown["arm"] = ["base" if a == "none" else f"+{a.upper()}" for a in sub["arm"]]
        for col in [c for c in shown.columns if c.startswith("acc_")] + ["paper_avg"]:
            if col in shown:
                shown[col] = ["" if math.isnan(v) else f"{v:.2f}" for v in sub[col]]
        shown["avg"] = [_ms(m, s) for m, s in zip(sub["avg"], sub["avg_std"], strict=True)]
        shown = shown.drop(columns=["dataset", "avg_std"], errors="ignore").astype(str)
        parts.append(f"### {dataset}\n\n{shown.to_markdown(index=False, disable_numparse=True)}")
    return "\n\n".join(parts) + "\n"


def domain_win_rows(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """``mode=fl``: per (dataset, setting, strategy, budget, arm, test domain), GGEUR's gain over
    ``augment=none`` of the same setting, strategy, budget and seed in that domain's final accuracy: mean
    gain (points) and how many seeds won, lost and tied. Empty without paired runs."""
    frame = fl_frame(records)
    if frame.empty:
        return pd.DataFrame()
    keys = ["dataset", "partition", "setting", "strategy", "budget"]
    rows = []
    for key, cell in frame.groupby(keys, sort=True):
        base = cell[cell["arm"] == "none"]
        for arm, sub in cell[cell["arm"] != "none"].groupby("arm", sort=True):
            for col in [c for c in domain_columns(cell) if cell[c].notna().all()]:
                gains = seed_gains(base, sub, col)
                if gains:
                    rows.append(dict(zip(keys, key, strict=True)) | {
                        "arm": arm, "domain": col.removeprefix("acc_").removesuffix("_final"),
                        "gain_pts_mean": mean_std(gains)[0], "seeds": len(gains),
                        "won": sum(g > 0 for g in gains), "lost": sum(g < 0 for g in gains),
                        "tied": sum(g == 0 for g in gains)})  # fmt: skip
    return pd.DataFrame(rows)


def fl_round_plot(records: Iterable[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path | None:
    """Global test accuracy per round (mean ± std over seeds, one line per setting, strategy and arm)."""
    frame = fl_frame(records)
    if frame.empty:
        return None
    curves = {}
    for key, cell in frame.groupby(["dataset", "setting", "strategy", "budget", "arm"], sort=True):
        runs = [c for c in cell["curve"] if c]
        if not runs:
            continue
        steps = min(len(c) for c in runs)
        pairs = [mean_std(run[i] for run in runs) for i in range(steps)]
        curves[" ".join(str(k) for k in key)] = (
            [m for m, _ in pairs],
            [0.0 if math.isnan(s) else s for _, s in pairs],
        )
    if not curves:
        return None
    return line_plot(curves, path, xlabel="round", ylabel="global test accuracy", title="mode=fl accuracy per round",
                     first_step=1)  # fmt: skip


def fed_comparison_table(records: Iterable[Mapping[str, Any]], out: str | os.PathLike[str]) -> list[Path]:
    """Write into folder ``out`` (atomically) the GGEUR-vs-none table (``ggeur_comparison.csv``/``.md``)
    and, with ``mode=fl`` records, the paper-style table (``ggeur_fl_vs_paper.csv``/``.md``), the wins and
    losses per test domain and seed (``ggeur_fl_domain_wins.csv``/``.md``) and the per-round plot
    (``ggeur_fl_rounds.png``). Returns the paths written (``[]`` without fed records)."""
    records = list(records)
    out_dir = Path(out)
    written: list[Path] = []
    table = comparison_rows(records)
    if not table.empty:
        written += [
            atomic_write_text(out_dir / CSV_NAME, table.to_csv(index=False, na_rep="")),
            atomic_write_text(out_dir / MD_NAME, comparison_markdown(table)),
        ]
    fl = fl_paper_rows(records)
    if not fl.empty:
        written += [
            atomic_write_text(out_dir / FL_CSV_NAME, fl.to_csv(index=False, na_rep="")),
            atomic_write_text(out_dir / FL_MD_NAME, fl_paper_markdown(fl)),
        ]
        wins = domain_win_rows(records)
        if not wins.empty:
            written += [
                atomic_write_text(out_dir / WINS_CSV_NAME, wins.to_csv(index=False, na_rep="")),
                atomic_write_text(
                    out_dir / WINS_MD_NAME, wins.to_markdown(index=False, floatfmt=".2f") + "\n"
                ),
            ]
        plot = fl_round_plot(records, out_dir / FL_PLOT_NAME)
        written += [plot] if plot else []
    return written
