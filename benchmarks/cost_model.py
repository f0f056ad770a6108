"""Cost-model throughput: ``python -m benchmarks.cost_model [--tokens N] [--repeats R]``.

Times ``moe.cost_model.evaluate_placement`` (token-layers per second) on a million-token synthetic
Mixtral-8x7B trace on the paper's two topologies, on the real DeepSeek-V2-Lite trace on 4 x 8 GPUs (with and
without replicas), and compares it with the per-token reference (``moe.cost_model_reference``) on a slice
measured in the same run, checking that both give the same counts. Writes a run record into
``results/bench/cost_model/`` and prints a table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from benchmarks.timing import best_time
from common.experiment import RunContext, RunOutput, run_experiment
from common.log import get_logger
from moe.cost_model import EvalOptions, evaluate_placement
from moe.cost_model_reference import reference_counts
from moe.placement.base import Placement
from moe.stats import expert_load
from moe.synthetic import generate_trace
from moe.topology import Topology, topology_from_config

REPO = Path(__file__).resolve().parent.parent
REAL_TRACE = REPO / ".." / "shared" / "data" / "moe" / "deepseek_v2_lite_prefill.npz"
OUT = REPO / "results" / "bench" / "cost_model"


def preset(name: str) -> Topology:
    cfg = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "topology" / f"{name}.yaml"), resolve=True)
    return topology_from_config(cfg)  # type: ignore[arg-type]


def contiguous(num_layers: int, num_experts: int, num_gpus: int) -> Placement:
    gpu_of = np.tile(np.arange(num_experts) * num_gpus // num_experts, (num_layers, 1))
    return Placement.from_expert_to_gpu(gpu_of, num_gpus, name="contiguous")


def with_hot_replicas(base: Placement, load: np.ndarray, per_layer: int) -> Placement:
    """``base`` plus one extra copy of each layer's ``per_layer`` hottest experts on the next GPU."""
    assignment = [[list(gpu) for gpu in layer] for layer in base.assignment]
    gpu_of = base.expert_to_gpu()
    for li, row in enumerate(load):
        for e in np.argsort(-row, kind="stable")[:per_layer]:
            assignment[li][(gpu_of[li, e] + 1) % base.num_gpus].append(int(e))
    return Placement(assignment, base.num_experts, name="contiguous+replicas")


def body(ctx: RunContext, tokens: int, repeats: int, ref_tokens: int) -> RunOutput:
    log = get_logger("bench")
    opts = EvalOptions()
    metrics: dict[str, float] = {}
    rows = []

    def case(name: str, experts: np.ndarray, placement: Placement, topo: Topology) -> None:
        t = best_time(lambda: evaluate_placement(experts, placement, topo, opts), repeats)
        tl = experts.shape[0] * experts.shape[1]
        metrics[f"{name}_s"] = t
        metrics[f"{name}_token_layers_per_s"] = tl / t
        rows.append((name, experts.shape, topo.name, t, tl / t))
        log.info(f"{name}: {t:.3f} s, {tl / t / 1e6:.2f} M token-layers/s")

    mixtral = generate_trace("mixtral_8x7b", tokens, skew=1.0, affinity=0.5, seed=ctx.seed).experts
    for topo_name in ("paper_single_node", "paper_multi_node"):
        topo = preset(topo_name)
        case(f"mixtral_{topo_name}", mixtral, contiguous(32, 8, topo.num_gpus), topo)

    if REAL_TRACE.exists():
        with np.load(REAL_TRACE) as d:
            real = d["experts"]
        topo = preset("h100_cluster4x8")
        base = contiguous(real.shape[1], 64, topo.num_gpus)
        case("deepseek_real_cluster4x8", real, base, topo)
        case(
            "deepseek_real_cluster4x8_replicas", real, with_hot_replicas(base, expert_load(real, 64), 8), topo
        )
    else:
        log.warning(f"real trace not found at {REAL_TRACE}; its cases are skipped")

    # baseline: the per-token reference on a slice, same inputs; the counts must agree
    topo = preset("paper_multi_node")
    sl = mixtral[:ref_tokens]
    place = contiguous(32, 8, topo.num_gpus)
    t_ref = best_time(lambda: reference_counts(sl, place, topo, opts), 1)
    t_vec = best_time(lambda: evaluate_placement(sl, place, topo, opts), repeats)
    ref = reference_counts(sl, place, topo, opts)
    vec = evaluate_placement(sl, place, topo, opts)
    match = all(np.array_equal(getattr(vec, k), v) for k, v in ref.items())
    tl = sl.shape[0] * sl.shape[1]
    metrics.update(
        reference_s=t_ref,
        reference_token_layers_per_s=tl / t_ref,
        vectorised_slice_s=t_vec,
        speedup_vs_reference=t_ref / t_vec,
        reference_counts_match=float(match),
    )
    rows.append(("reference (per token)", sl.shape, topo.name, t_ref, tl / t_ref))
    rows.append(("vectorised, same slice", sl.shape, topo.name, t_vec, tl / t_vec))

    print(f"{'case':38s} {'trace shape':>18s} {'topology':>18s} {'seconds':>9s} {'M token-layers/s':>17s}")
    for name, shape, tname, t, rate in rows:
        print(f"{name:38s} {str(tuple(shape)):>18s} {tname:>18s} {t:9.3f} {rate / 1e6:17.2f}")
    print(f"vectorised / reference speed on the same slice: {t_ref / t_vec:.0f}x; counts match: {match}")
    return RunOutput(metrics=metrics)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=1_000_000, help="tokens of the synthetic Mixtral trace")
    ap.add_argument("--repeats", type=int, default=2, help="timed repeats per case (the best is kept)")
    ap.add_argument("--ref-tokens", type=int, default=8192, help="tokens of the reference slice")
    ap.add_argument("--out", type=Path, default=OUT, help="run folder for result.json")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    config = {
        "benchmark": "cost_model",
        "tokens": args.tokens,
        "repeats": args.repeats,
        "ref_tokens": args.ref_tokens,
        "seed": args.seed,
        "eval": vars(EvalOptions()) | {"percentiles": list(EvalOptions().percentiles)},
    }
    run_experiment(
        config, "moe", lambda ctx: body(ctx, args.tokens, args.repeats, args.ref_tokens), run_dir=args.out
    )


if __name__ == "__main__":
    main()
