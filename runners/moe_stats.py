"""``python -m runners.moe mode=stats trace=...``: routing statistics of a trace, heatmaps and a run record.

Writes into the run folder: ``load_heatmap.png`` (expert load per layer / layer mean),
``affinity_heatmap.png`` (P(next | prev) / P(next) for the first, middle and last layer boundary, and the
affinity score of every boundary), ``stats.npz`` (``load [L, E]``, ``cross [L-1, E, E]`` counting all top-k x
top-k pairs, ``imbalance [L]``, ``affinity [L-1]``), and the record's metrics and per-layer series.
"""

from __future__ import annotations

from common.atomic import atomic_savez
from common.experiment import RunContext, RunOutput
from moe.stats import affinity_lift, expert_load, load_distance, trace_statistics
from moe.stats_plots import plot_affinity_heatmaps, plot_load_heatmap
from runners.moe_inputs import load_trace_from_config, split_from_config


def run(ctx: RunContext) -> RunOutput:
    """Compute the statistics of ``ctx.config['trace']`` and write the heatmaps and arrays."""
    trace_cfg = ctx.config.get("trace") or {}
    trace = load_trace_from_config(trace_cfg, ctx.seed)
    name = str(trace_cfg.get("name", trace_cfg.get("kind", "trace")))
    ctx.log.info(f"trace {name}: {trace.describe()}")

    st = trace_statistics(trace.experts, trace.num_experts)
    profile, evaluation = split_from_config(trace, trace_cfg, ctx.seed)
    drift = load_distance(
        expert_load(profile.experts, trace.num_experts), expert_load(evaluation.experts, trace.num_experts)
    )

    plot_load_heatmap(st.load, ctx.artifact("load_heatmap.png"), title=f"{name}: expert load / layer mean")
    plot_affinity_heatmaps(
        affinity_lift(st.cross), st.affinity, ctx.artifact("affinity_heatmap.png"), title=f"{name}: affinity"
    )
    atomic_savez(
        ctx.artifact("stats.npz"),
        load=st.load,
        cross=st.cross,
        imbalance=st.imbalance,
        affinity=st.affinity,
        top_k=trace.top_k,
    )

    metrics = {
        "tokens": float(trace.num_tokens),
        "layers": float(trace.num_layers),
        "experts": float(trace.num_experts),
        "top_k": float(trace.top_k),
        "prompts": float(trace.num_prompts),
        **st.metrics(),
        "profile_eval_load_tv_mean": float(drift.mean()),
    }
    width = max(1, len(str(trace.num_layers)))
    for layer in range(trace.num_layers):
        aff = f"{st.affinity[layer]:.3f}" if layer < len(st.affinity) else "  -  "
        ctx.log.info(
            f"layer {layer:>{width}}: max/mean load {st.imbalance[layer]:.2f}  cv {st.cv[layer]:.2f}  "
            f"affinity to next {aff}  profile/eval load TV {drift[layer]:.3f}"
        )
    ctx.log.info(
        f"summary: imbalance_max_over_mean={metrics['imbalance_max_over_mean']:.3f}  "
        f"affinity_mean={metrics['affinity_mean']:.4f}  heatmaps in {ctx.run_dir}"
    )
    return RunOutput(
        metrics=metrics,
        series={
            "imbalance": st.imbalance.tolist(),
            "load_cv": st.cv.tolist(),
            "affinity": st.affinity.tolist(),
            "profile_eval_load_tv": drift.tolist(),
        },
        series_step={
            "imbalance": "layer",
            "load_cv": "layer",
            "affinity": "layer",
            "profile_eval_load_tv": "layer",
        },
    )
