"""Speed of the one-layer cost model that the placement searches replay: ``python -m benchmarks.layer_model
[--tokens 8192,16384] [--repeats 300]``.

Setting of MoETuner+'s cross-node search (``experiment=moetuner_multi_node``: ``paper_multi_node``, batches of
2,048 tokens, ``even`` replicas, tokens ``follow`` their experts): the first ``--tokens`` tokens of the real
DeepSeek-V2-Lite trace (the synthetic DeepSeek-V2-Lite-shaped trace when it is absent), an EPLB placement with
one extra slot per GPU. Per token count, ``LayerModel.time`` against ``full_replay_time`` (the same layer
through ``evaluate_placement``'s own replay) on every layer, both in this process, alternated, best of three
rounds of ``--repeats`` calls; the two must agree bit for bit (``*_matches``). Writes
``results/bench/layer_model/``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from benchmarks.cli import int_at_least, int_list, run
from benchmarks.cost_model import preset
from common.experiment import RunContext, RunOutput
from common.log import get_logger
from moe.cost_model import EvalOptions
from moe.layer_model import LayerModel, full_replay_time
from moe.placement.eplb import eplb
from moe.stats import expert_load
from moe.synthetic import generate_trace

REPO = Path(__file__).resolve().parent.parent
REAL_TRACE = REPO / ".." / "shared" / "data" / "moe" / "deepseek_v2_lite_prefill.npz"
OUT = REPO / "results" / "bench" / "layer_model"
OPTS = EvalOptions(batch_tokens=2048, token_movement="follow", replica_choice="even")
NUM_EXPERTS = 64  # DeepSeek-V2-Lite, real or synthetic


def _trace(tokens: int) -> tuple[np.ndarray, str]:
    """int ``[T, L, k]`` expert ids of the first ``tokens`` tokens, and the trace's name."""
    if REAL_TRACE.exists():
        with np.load(REAL_TRACE) as d:
            return np.asarray(d["experts"][:tokens], dtype=np.int64), "deepseek_v2_lite"
    get_logger("bench").warning(
        f"real trace not found at {REAL_TRACE}: synthetic DeepSeek-V2-Lite shape instead"
    )
    return generate_trace("deepseek_v2_lite", tokens, skew=1.0, affinity=0.5, seed=0).experts, "synthetic"


def _per_call_ms(fn, layers: list, model: LayerModel, repeats: int) -> float:  # noqa: ANN001
    """Mean ms per call over ``repeats`` calls cycling through the layers (each from the start layout)."""
    t0 = time.perf_counter()
    for i in range(repeats):
        li = i % len(layers)
        fn(model, li, layers[li], model.start)
    return (time.perf_counter() - t0) / repeats * 1e3


def _same(model: LayerModel, li: int, layer: list[list[int]]) -> bool:
    """Both paths give the same time and positions for layer ``li`` from the start layout, bit for bit."""
    (t1, p1), (t2, p2) = model.time(li, layer, model.start), full_replay_time(model, li, layer, model.start)
    return t1 == t2 and np.array_equal(p1, p2)


def body(ctx: RunContext, token_counts: list[int], repeats: int) -> RunOutput:
    topo = preset("paper_multi_node")
    metrics: dict[str, float] = {}
    name = ""
    for tokens in token_counts:
        experts, name = _trace(tokens)
        load = expert_load(experts, NUM_EXPERTS)
        layers = eplb(load, topo.num_gpus, topo.ranks_per_node, num_redundant=topo.num_gpus).assignment
        model = LayerModel(experts, topo, OPTS, "unordered", NUM_EXPERTS)
        same = all(_same(model, li, layer) for li, layer in enumerate(layers))
        fast, full = [], []
        for _ in range(3):  # alternated rounds: both see the same machine load
            fast.append(_per_call_ms(lambda m, li, lay, src: m.time(li, lay, src), layers, model, repeats))
            full.append(_per_call_ms(full_replay_time, layers, model, repeats))
        metrics |= {
            f"tokens{tokens}_layer_model_ms": min(fast),
            f"tokens{tokens}_full_replay_ms": min(full),
            f"tokens{tokens}_speedup": min(full) / min(fast),
            f"tokens{tokens}_matches": float(same),
        }
        print(f"{tokens:6d} tokens: LayerModel.time {min(fast):.3f} ms, full replay {min(full):.3f} ms per call "
              f"({min(full) / min(fast):.2f}x); bit for bit equal: {same}")  # fmt: skip
    return RunOutput(metrics=metrics, labels={"trace": name, "topology": topo.name})


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--tokens",
        type=int_list(2048, "token count"),
        default="8192,16384",
        help="comma-separated token counts",
    )
    ap.add_argument("--repeats", type=int_at_least(1), default=300, help="calls per timed round")
    ap.add_argument("--out", type=Path, default=OUT, help="run folder for result.json")
    args = ap.parse_args(argv)
    config = {
        "benchmark": "layer_model",
        "tokens": ",".join(map(str, args.tokens)),
        "repeats": args.repeats,
        "seed": 0,
    }
    run(ap, config, lambda ctx: body(ctx, args.tokens, args.repeats), args.out)


if __name__ == "__main__":
    main()
