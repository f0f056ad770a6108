"""Speed of the one-layer cost model that the placement searches replay: ``python -m benchmarks.layer_model
[--tokens 8192,16384,32768] [--repeats 300]``.

Setting of MoETuner+'s cross-node search (``experiment=moetuner_multi_node``: ``paper_multi_node``, batches of
2,048 tokens, ``even`` replicas, tokens ``follow`` their experts): the first ``--tokens`` tokens of the real
DeepSeek-V2-Lite trace (the synthetic DeepSeek-V2-Lite-shaped trace when it is absent), an EPLB placement with
one extra slot per GPU. Per token count, ``LayerModel.time`` against ``full_replay_time`` (the same layer
through ``evaluate_placement``'s own replay) on every layer, both in this process, alternated, best of three
rounds of ``--repeats`` calls; the two must agree bit for bit (``*_matches``). Then what a search pays per
move (a swap of two experts between two random GPUs of one layer, a fixed list of moves): the layer and the
next one replayed whole (``time`` twice, the search before) against the move replayed on the tokens it
touches (``LayerModel.moved``, then ``shifted`` for the next layer), same numbers bit for bit
(``*_move_matches``). Writes ``results/bench/layer_model/``.
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
from moe.layer_model import LayerModel, Move, full_replay_time
from moe.placement.base import swap_experts
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


def _moves(layers: list, count: int, seed: int = 0) -> list[tuple[int, list[list[int]]]]:
    """``count`` (layer, new assignment of it) swaps of two experts between two random GPUs of a random layer
    (not the last one, so that every move has a next layer)."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < count:
        li = int(rng.integers(len(layers) - 1))
        layer = layers[li]
        g1, g2 = rng.choice(len(layer), size=2, replace=False).tolist()
        x, y = int(rng.choice(layer[g1])), int(rng.choice(layer[g2]))
        if x not in layer[g2] and y not in layer[g1]:
            out.append((li, swap_experts(layer, g1, x, g2, y)))
    return out


def _move_costs(model: LayerModel, layers: list, repeats: int) -> dict[str, float]:
    """Per move: ms with both layers replayed whole and with the move's tokens only (best of 3 alternated
    rounds), whether the two agree bit for bit, and the mean share of tokens a move touches."""
    reps = model.replays(layers)

    def entry(li: int) -> np.ndarray:  # positions entering layer li
        return reps[li - 1].nxt if li else model.start

    def whole(li: int, new: list[list[int]]) -> float:
        t, nxt = model.time(li, new, entry(li))
        return t + model.time(li + 1, layers[li + 1], nxt)[0]

    def local_time(li: int, mv: Move) -> float:
        return mv.time + model.shifted(li + 1, reps[li + 1], mv.tok, reps[li].nxt[mv.tok], mv.nxt).time

    def local(li: int, new: list[list[int]]) -> float:
        return local_time(li, model.moved(li, reps[li], layers[li], new, entry(li)))

    moves = _moves(layers, repeats)
    once = [(li, new, model.moved(li, reps[li], layers[li], new, entry(li))) for li, new in moves]
    same = all(whole(li, new) == local_time(li, mv) for li, new, mv in once)
    touched = np.mean([mv.tok.size for _, _, mv in once])
    times: dict[str, list[float]] = {"whole": [], "local": []}
    for _ in range(3):
        for key, fn in (("whole", whole), ("local", local)):
            t0 = time.perf_counter()
            for li, new in moves:
                fn(li, new)
            times[key].append((time.perf_counter() - t0) / len(moves) * 1e3)
    w, lo = min(times["whole"]), min(times["local"])
    return {"move_whole_ms": w, "move_local_ms": lo, "move_speedup": w / lo, "move_matches": float(same),
            "move_touched_share": float(touched / model.tok.size)}  # fmt: skip


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
        moves = _move_costs(model, layers, repeats)
        metrics |= {f"tokens{tokens}_{k}": v for k, v in moves.items()}
        print(f"{tokens:6d} tokens: LayerModel.time {min(fast):.3f} ms, full replay {min(full):.3f} ms per call "
              f"({min(full) / min(fast):.2f}x); bit for bit equal: {same}; per move: both layers whole "
              f"{moves['move_whole_ms']:.3f} ms, the move's tokens only {moves['move_local_ms']:.3f} ms "
              f"({moves['move_speedup']:.2f}x, {moves['move_touched_share']:.0%} of the tokens); bit for bit "
              f"equal: {bool(moves['move_matches'])}")  # fmt: skip
    return RunOutput(metrics=metrics, labels={"trace": name, "topology": topo.name})


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--tokens",
        type=int_list(2048, "token count"),
        default="8192,16384,32768",
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
