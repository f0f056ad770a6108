"""Online re-placement speed: ``python -m benchmarks.replan [--windows N] [--drift r] [--budget M]``.

Times one ``incremental`` re-placement (``moe.replan``) at the DeepSeek-V2-Lite shape (64 experts, top-6,
26 MoE layers; hidden 2048, expert FFN 1408) on 8 GPUs (``conf/topology/h100_node8.yaml``): the placement
from scratch on the last profiled window (the target, EPLB and greedy), the gain model's replay of that
window and the budgeted greedy steps from the placement serving the window before. The trace is the shared
real one cut into ``--windows`` windows with ``--drift`` (synthetic DeepSeek-V2-Lite shape when it is
absent). Goal: an incremental step within 5 s, so that it could run next to a serving engine. Baseline in
the same run: the ``periodic`` re-placement (the target alone). Writes ``results/bench/replan/``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from omegaconf import OmegaConf

from benchmarks.cli import float_in, int_at_least, run
from benchmarks.timing import timed
from common.experiment import RunContext, RunOutput
from common.log import get_logger
from moe.cost_model import EvalOptions
from moe.migration import expert_weight_bytes, migration
from moe.placement.eplb import EPLB
from moe.placement.greedy import Greedy
from moe.placement.profiled import ProfiledProblem
from moe.replan import incremental_step
from moe.replan_gain import LayerGain
from moe.topology import topology_from_config
from moe.trace_source import trace_source

REPO = Path(__file__).resolve().parent.parent
REAL_TRACE = REPO / ".." / "shared" / "data" / "moe" / "deepseek_v2_lite_prefill.npz"
OUT = REPO / "results" / "bench" / "replan"
GOAL_S = 5.0


def _conf(group: str, name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(REPO / "conf" / group / f"{name}.yaml"), resolve=True)  # type: ignore[return-value]


def _source(windows: int, drift: float):  # noqa: ANN202 - a TraceSource
    dims = {"hidden_size": 2048, "expert_ffn": 1408}
    if REAL_TRACE.exists():
        return trace_source({"_target_": "moe.trace_source.FileTrace", "name": "deepseek_v2_lite",
                             "path": str(REAL_TRACE), "slot_order": "unordered", "model": dims,
                             "windows": windows, "drift": drift})  # fmt: skip
    get_logger("bench").warning(f"real trace not found at {REAL_TRACE}: synthetic DeepSeek-V2-Lite shape")
    return trace_source({"_target_": "moe.trace_source.SyntheticTrace", "preset": "deepseek_v2_lite",
                         "tokens": 192000, "windows": windows, "drift": drift})  # fmt: skip


def _one(placer, prev_w, cur_w, topo, opts, budget: int, repeats: int, seed: int) -> dict[str, float]:  # noqa: ANN001
    """Time one placement's target on ``cur_w`` and the incremental step from its placement of ``prev_w``."""
    order = cur_w.slot_order or "unordered"
    ebytes = expert_weight_bytes(topo)
    min_ratio = ebytes / float(topo.bandwidth_bytes_per_s()[0, 1]) / 3000  # one copy's move over 3000 steps

    def target(w):  # noqa: ANN001, ANN202
        return placer.place(ProfiledProblem.from_trace(w.experts, w.num_experts, topo, opts, order, seed))

    current = target(prev_w)
    t_target, tgt = timed(lambda: target(cur_w), repeats)

    def step():  # noqa: ANN202
        gain = LayerGain(cur_w.experts, current, topo, opts, order, 8192)
        return incremental_step(current, tgt, budget, gain, min_ratio, gain.load)

    t_step, new = timed(step, repeats)
    total = t_target + t_step
    return {"target_s": t_target, "gain_greedy_s": t_step, "incremental_s": total,
            "incremental_vs_goal": total / GOAL_S, "incremental_vs_periodic": total / t_target,
            "moved_copies": float(migration(current, new, topo, ebytes).num_copies),
            "periodic_copies": float(migration(current, tgt, topo, ebytes).num_copies)}  # fmt: skip


def body(ctx: RunContext, windows: int, drift: float, budget: int, repeats: int) -> RunOutput:
    log = get_logger("bench")
    source = _source(windows, drift)
    topo = source.topology_for(topology_from_config(_conf("topology", "h100_node8")))
    opts = EvalOptions(batch_tokens=2048)
    parts = source.windowed(ctx.seed)
    prev_w, cur_w = parts[-3], parts[-2]  # the window before (serving placement) and the one re-placed on
    metrics: dict[str, float] = {"window_tokens": float(cur_w.num_tokens)}
    print(f"{'placement':12s} {'target s':>9s} {'gain+greedy s':>14s} {'incremental s':>14s} {'copies':>7s} "
          f"{'periodic copies':>16s}")  # fmt: skip
    # EPLB as deployed (one redundant slot per GPU, conf/placement/eplb.yaml) and greedy (no replicas)
    for name, placer in (("eplb", EPLB(num_redundant=topo.num_gpus)), ("greedy", Greedy())):
        m = _one(placer, prev_w, cur_w, topo, opts, budget, repeats, ctx.seed)
        metrics.update({f"{name}_{k}": v for k, v in m.items()})
        log.info(f"{name}: incremental re-placement {m['incremental_s']:.2f} s")
        print(f"{name:12s} {m['target_s']:9.3f} {m['gain_greedy_s']:14.3f} {m['incremental_s']:14.3f} "
              f"{int(m['moved_copies']):7d} {int(m['periodic_copies']):16d}")  # fmt: skip
    print(f"goal: an incremental re-placement within {GOAL_S:.0f} s (budget {budget} copies per layer)")
    return RunOutput(metrics=metrics)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--windows", type=int_at_least(2), default=8, help="windows of the trace (one is re-placed)"
    )
    ap.add_argument("--drift", type=float_in(0.0, 1.0), default=0.1, help="drift rate per window boundary")
    ap.add_argument("--budget", type=int_at_least(0), default=4, help="expert copies moved per layer at most")
    ap.add_argument("--repeats", type=int_at_least(1), default=2, help="timed repeats (the best is kept)")
    ap.add_argument("--out", type=Path, default=OUT, help="run folder for result.json")
    ap.add_argument("--seed", type=int_at_least(0), default=0)
    args = ap.parse_args(argv)
    config = {"benchmark": "replan", **{k: v for k, v in vars(args).items() if k != "out"}}
    run(ap, config, lambda ctx: body(ctx, args.windows, args.drift, args.budget, args.repeats), args.out)


if __name__ == "__main__":
    main()
