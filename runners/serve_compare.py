"""``mode=compare`` (``experiment=serve_placements``): several placements through the engine in one launch.

Why one launch: a Hydra multirun job cannot start torchrun per job, and starting the ranks again per
placement costs more than the measurement on small sizes. So the preset lists the placements
(``compare.placements``) and the suite's candidates (``compare.candidates``: the one whose cost-model layer
time on the profile part is lowest also runs, as ``best_<name>``); every rank serves each in turn on the same
trace batches. Rank 0 records each placement's measured and modelled times, reductions against contiguous next
to the paper's, and ``model_rank_agreement`` (pairs of placements that engine and cost model order alike).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import pandas as pd

from common.atomic import atomic_write_text
from common.errors import ConfigError
from common.experiment import RunContext, RunOutput
from common.log import get_logger
from moe.engine.comm import DistContext, agree
from moe.engine.compare import model_report, rank_agreement
from moe.engine.placement_source import serve_placement
from moe.engine.spec import EngineOptions
from moe.paper_numbers import PAPER_RESULTS, TOPOLOGY_SETTING
from moe.placement.base import Placement
from runners.serve_body import (
    ServeSetup,
    broadcast_placement,
    measure_placement,
    placement_metrics,
    run_labels,
    run_ranked,
    setup,
)

BASELINE = "contiguous"
PER_PLACEMENT = ("step_time_s", "tokens_per_s", "a2a_time_tail_s", "layer_time_tail_s", "compute_time_tail_s",
                 "model_layer_time_tail_s", "model_a2a_time_tail_s", "dispatch_matches_cost_model",
                 "model_layer_time_corr", "model_corr_points", "max_abs_err_vs_reference")  # fmt: skip
REDUCED = (
    "layer_time_tail_s",
    "a2a_time_tail_s",
    "compute_time_tail_s",
    "model_layer_time_tail_s",
    "model_a2a_time_tail_s",
)


def _key(label: str) -> str:
    return re.sub(r"[^a-z0-9_]+", "_", label.lower()).strip("_")


def pick_best(s: ServeSetup, candidates: Mapping[str, Any], cfg: Mapping[str, Any]) -> Placement:
    """The candidate with the lowest cost-model layer time on the profile part (rank 0 only)."""
    layers = s.spec.num_layers
    n = min(s.opts.batch_tokens, s.profile.num_tokens)
    best: tuple[float, Placement] | None = None
    for label, pcfg in candidates.items():
        p = serve_placement(
            pcfg,
            None,
            s.profile,
            layers,
            s.topology,
            int(cfg["seed"]),
            s.replica_choice,
        )
        t = model_report(s.profile.experts[:, :layers], p, s.topology, n, s.replica_choice).summary()[
            "layer_time_tail_s"
        ]
        get_logger("serve").info(f"candidate {label}: cost-model layer time {t:.4g} s on the profile part")
        if best is None or t < best[0]:
            best = (t, p)
            p.name = f"best_{_key(label)}"
    assert best is not None
    return best[1]


def aggregate(per: dict[str, dict[str, float]], topology_name: str) -> dict[str, float]:
    """Flat metrics of all placements, reductions against contiguous, the paper's, and the rank agreement."""
    out: dict[str, float] = {}
    base = per.get(BASELINE)
    for label, m in per.items():
        k = _key(label)
        out.update({f"{k}_{name}": m[name] for name in PER_PLACEMENT if name in m})
        if base is not None:
            for name in REDUCED:
                if base.get(name):
                    out[f"{k}_{name.removesuffix('_s')}_reduction"] = 1.0 - m[name] / base[name]
    labels = list(per)
    out["model_rank_agreement"] = rank_agreement(
        [per[x]["layer_time_tail_s"] for x in labels], [per[x]["model_layer_time_tail_s"] for x in labels]
    )
    out["step_rank_agreement"] = rank_agreement(
        [per[x]["step_time_s"] for x in labels], [per[x]["model_layer_time_tail_s"] for x in labels]
    )
    out["placements_compared"] = float(len(labels))
    paper = PAPER_RESULTS.get(TOPOLOGY_SETTING.get(topology_name, ""), {})
    for name in ("a2a_time_tail_reduction", "token_time_tail_reduction"):
        if name in paper:
            out[f"paper_moetuner_{name}"] = paper[name]
    return out


def table(per: dict[str, dict[str, float]], agg: dict[str, float]) -> str:
    """Markdown: one row per placement, measured vs modelled times and reductions."""
    rows = []
    for label, m in per.items():
        k = _key(label)
        rows.append({"placement": label, "step_s": m["step_time_s"], "layer_tail_s": m["layer_time_tail_s"],
                     "a2a_tail_s": m["a2a_time_tail_s"], "model_layer_tail_s": m["model_layer_time_tail_s"],
                     "measured_layer_reduction": agg.get(f"{k}_layer_time_tail_reduction"),
                     "model_layer_reduction": agg.get(f"{k}_model_layer_time_tail_reduction"),
                     "measured_a2a_reduction": agg.get(f"{k}_a2a_time_tail_reduction"),
                     "model_a2a_reduction": agg.get(f"{k}_model_a2a_time_tail_reduction")})  # fmt: skip
    head = (f"model_rank_agreement = {agg['model_rank_agreement']:.3g}; the paper's MoETuner all-to-all tail "
            f"reduction: {agg.get('paper_moetuner_a2a_time_tail_reduction', float('nan')):.3g} (its cluster, not this one)\n\n")  # fmt: skip
    return head + pd.DataFrame(rows).to_markdown(index=False, floatfmt=".4g") + "\n"


def compare_one(
    ctx: RunContext | None, cfg: Mapping[str, Any], dctx: DistContext, opts: EngineOptions
) -> RunOutput:
    s = agree(lambda: setup(cfg, opts, dctx))
    assert s is not None
    comp = cfg.get("compare") or {}
    placements = dict(comp.get("placements") or {})
    if not placements:
        raise ConfigError(
            "compare.placements", "expected at least one placement option (see experiment=serve_placements)"
        )
    seed, layers = int(cfg["seed"]), s.spec.num_layers
    makers: list[Any] = [
        (lambda pc=pc, lb=lb: _named(serve_placement(pc, None, s.profile, layers, s.topology, seed,
                                                      s.replica_choice), lb))
        for lb, pc in placements.items()
    ]  # fmt: skip
    if comp.get("candidates"):
        makers.append(lambda: pick_best(s, comp["candidates"], cfg))
    per: dict[str, dict[str, float]] = {}
    kernel = ""
    series: dict[str, list[float]] = {}
    for make in makers:
        placement = broadcast_placement(make, dctx)
        meas = measure_placement(s, placement, dctx, seed)
        kernel = meas.kernel
        if ctx is not None:
            m, ser, _ = placement_metrics(s, placement, meas)
            per[placement.name] = m
            series[f"{_key(placement.name)}_layer_time_tail_s"] = ser["layer_time_tail_s"]
            series[f"{_key(placement.name)}_model_layer_time_tail_s"] = ser["model_layer_time_tail_s"]
            placement.save(ctx.artifact(f"placements/{_key(placement.name)}.json"))
            ctx.logger.event("placement", name=placement.name, step_time_s=m["step_time_s"])
    if ctx is None:
        return RunOutput(metrics={})
    agg = aggregate(per, str((cfg.get("topology") or {}).get("name", "")))
    agg["world_size"] = float(dctx.world_size)
    atomic_write_text(ctx.artifact("serve_placements.md"), table(per, agg))
    return RunOutput(metrics=agg, series=series, series_step={k: "layer" for k in series},
                     labels=run_labels(cfg, dctx, opts, kernel))  # fmt: skip


def _named(p: Placement, label: str) -> Placement:
    p.name = label
    return p


def compare_rank(cfg: dict[str, Any], run_dir: str, roots: list[str]) -> None:
    """The rank function of ``mode=compare``."""
    run_ranked(cfg, run_dir, roots, compare_one)
