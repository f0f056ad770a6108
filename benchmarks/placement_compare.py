"""Every placement on one (trace, topology) split, one seed: speedup against contiguous and fraction of bound.

``python -m benchmarks.placement_compare TRACE TOPOLOGY SEED PLACEMENTS [overrides...]``, e.g.
``python -m benchmarks.placement_compare deepseek_v2_lite paper_multi_node 0 contiguous,exflow,moetuner_plus``.
Composes ``conf/moe.yaml`` with ``trace.max_tokens=60000 eval.batch_tokens=2048`` (the quick presets'
setting), gives every placement ``CAP`` seconds (environment, default 10, as the presets'
``placement.time_limit_s``), runs each on the same profile / evaluation split and prints one line each.
"""

from __future__ import annotations

import os
import sys
import time

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from common.config import build
from common.threads import limit_threads
from moe.bound import fraction_of_bound, max_slots
from moe.cost_model import evaluate_placement
from moe.placement.profiled import ProfiledProblem
from moe.stats import cross_layer_counts, expert_load
from moe.topology import topology_from_config
from moe.trace_source import trace_source
from runners.hydra_entry import CONF_DIR, install, to_plain


def _configs(trace: str, topo: str, seed: int, placements: list[str], extra: list[str]) -> tuple[dict, dict]:
    install()
    cap = float(os.environ.get("CAP", "10"))
    base = [f"trace={trace}", f"topology={topo}", "trace.max_tokens=60000", "eval.batch_tokens=2048"]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="moe", overrides=[*base, f"seed={seed}", *extra])
        pcfgs = {
            p: OmegaConf.to_container(
                compose(
                    config_name="moe",
                    overrides=[f"placement={p}", f"topology={topo}", f"placement.time_limit_s={cap}"],
                ),
                resolve=True,
            )["placement"]
            for p in placements
        }
    return to_plain(cfg), pcfgs  # the mode as its name, as the runner records it


def main(argv: list[str]) -> None:
    limit_threads()
    trace, topo, seed, placements = argv[0], argv[1], int(argv[2]), argv[3].split(",")
    cfg, pcfgs = _configs(trace, topo, seed, placements, argv[4:])
    src = trace_source(cfg["trace"])
    topology = src.topology_for(topology_from_config(cfg["topology"]))
    opts = build(cfg["eval"], "eval")
    prof, ev = src.profile_and_evaluation(seed)
    e, order = prof.num_experts, ev.slot_order or "unordered"
    problem = ProfiledProblem(
        expert_load(prof.experts, e), cross_layer_counts(prof.experts, e), topology.bandwidth_gbps(),
        topology.ranks_per_node, seed, experts=prof.experts, topology=topology, options=opts, slot_order=order,
    )  # fmt: skip
    base = None
    for name in placements:
        placer = build(pcfgs[name], "placement")
        t0 = time.perf_counter()
        pl = placer.place(problem)
        dt = time.perf_counter() - t0
        r = evaluate_placement(ev.experts, pl, topology, opts, slot_order=order)
        s = r.summary()
        base = s["layer_time_tail_s"] if base is None else base
        fb = fraction_of_bound(r, ev.top_k, topology, max_slots(pl))["fraction_of_bound"]
        print(
            f"{trace:17s} {topo:18s} {name:18s} speedup {base / s['layer_time_tail_s']:6.3f}  frac_bound "
            f"{fb:5.3f}  bal {s['balancedness_mean']:5.3f}  place {dt:6.1f}s  {pl.info.get('status')}",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
