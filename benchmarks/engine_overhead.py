"""Per-layer overhead of the engine's MoE layer beyond compute and all-to-all, legacy vs fast, in one run.

Every rank builds both paths (``engine.dispatch=legacy`` and ``fast``) for the same placement and batches.
Per layer and repeat (a barrier before each timed call, none inside; the slowest rank's time counts):

- ``layer``: one MoE layer call of the path (dispatch, expert compute, combine, everything it does);
- the path's **floor**: the all-to-all of the received rows' hidden states (``[m, H]``, known splits), the
  path's own expert GEMMs on the already-sorted copies (legacy: one SwiGLU per expert; fast: its kernel) and
  the all-to-all of the partials back, timed two ways: the three parts apart, each after its own barrier
  (``floor_<path>``, the first benchmark's), and the three in one call after one barrier
  (``floor_seq_<path>``: as a layer runs them, so a collective that follows compute pays the same waits);
- ``overhead = layer - floor`` (``<path>_overhead_s``; ``<path>_overhead_seq_s`` against the sequence
  floor): host round trips, planning, count and metadata exchanges, per-expert syncs, gathers.

Medians over repeats, summed over layers. ``launch_local`` spawns the ranks; rank 0 writes ``overhead.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from common.atomic import atomic_write_text
from moe.engine.batches import BatchSource
from moe.engine.comm import PhaseClock, init_distributed
from moe.engine.dispatch import exchange, layout, received_copies
from moe.engine.experts import StackedExperts
from moe.engine.model import ExpertParallelModel
from moe.engine.spec import EngineOptions, MoEModelSpec
from moe.placement.simple import contiguous
from moe.synthetic import ModelShape, generate_trace

PATHS = ("legacy", "fast", "padded")


def _timed(fn: Any) -> float:
    """Seconds of ``fn()`` on this rank, after a barrier (so every rank starts together)."""
    dist.barrier()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _floors(model: ExpertParallelModel, li: int, x: torch.Tensor, ids: torch.Tensor, gw: torch.Tensor,
            gtok: torch.Tensor) -> dict[str, float]:  # fmt: skip
    """Seconds of the pure all-to-alls plus each path's own expert GEMMs of one layer (inputs made untimed):
    ``legacy``: one SwiGLU per expert (its loop without the ``nonzero``), ``fast`` / ``padded``: the fast
    path's kernel. ``<path>``: the three parts timed apart, each after a barrier (the first benchmark's
    floor); ``seq_<path>``: the same three in one call after one barrier, as a layer runs them (the wait of a
    collective that follows compute on the other rank, and the wake-up of a rank that blocked, count)."""
    rt = model.runtime[li]
    lay = layout(x, ids, gw, gtok, model.rank, rt.routes, rt.host, rt.experts.count)
    rows = x[lay.rows].contiguous()
    meta = exchange(lay.meta, lay.send, lay.recv)
    h = exchange(rows, lay.send, lay.recv)
    cp = received_copies(meta, rt.top_k, sum(lay.per_slot), rt.routes.slots)
    loop = StackedExperts(rt.experts.experts, "loop")
    partial = rt.experts.forward(h, *cp, lay.per_slot)
    a2a = _timed(lambda: exchange(rows, lay.send, lay.recv)) + _timed(
        lambda: exchange(partial, lay.recv, lay.send)
    )
    out = {}
    for name, st in (("legacy", loop), ("fast", rt.experts)):
        out[name] = a2a + _timed(lambda st=st: st.forward(h, *cp, lay.per_slot))
        out[f"seq_{name}"] = _timed(
            lambda st=st: exchange(
                st.forward(exchange(rows, lay.send, lay.recv), *cp, lay.per_slot), lay.recv, lay.send
            )
        )
    out["padded"], out["seq_padded"] = out["fast"], out["seq_fast"]
    return out


def _timed_layer(m: ExpertParallelModel, li: int, x: torch.Tensor, ids: torch.Tensor, gw: torch.Tensor,
                 gtok: torch.Tensor, off: PhaseClock) -> float:  # fmt: skip
    """Seconds of one MoE layer call of ``m``'s path (no phase clock inside)."""
    return _timed(lambda: m._layer(li, x, ids, gw, gtok, off))  # noqa: SLF001 - the layer alone


def overhead_rank(cfg: dict[str, Any], run_dir: str, roots: list[str]) -> None:
    """One rank: per path and layer, the MoE layer's and the floor's seconds; rank 0 writes the table."""
    del roots
    spec = MoEModelSpec(**cfg["model"])
    dctx = init_distributed(EngineOptions(backend="gloo", device="cpu", timeout_s=300))
    g, n, reps = dctx.world_size, int(cfg["batch_tokens"]), int(cfg["repeats"])
    placement = contiguous(spec.num_layers, spec.num_experts, g)
    node_of = np.zeros(g, dtype=np.int64)
    models = {p: ExpertParallelModel(spec, placement, dctx.rank, 0, dctx.device, dctx.dtype, n // g, "even",
                                     node_of, p, cfg["kernel"]) for p in PATHS}  # fmt: skip
    shape = ModelShape("bench", spec.num_experts, spec.top_k, spec.num_layers)
    src = BatchSource(
        n, g, spec.hidden_size, 0, experts=generate_trace(shape, 4 * n, skew=1.0, seed=0).experts
    )
    off = PhaseClock(dctx.device, barriers=False, enabled=False)
    keys = (*PATHS, *(f"floor_{p}" for p in PATHS), *(f"floor_seq_{p}" for p in PATHS))
    times = {k: np.zeros((reps, spec.num_layers)) for k in keys}
    for r in range(reps):
        batch = src.batch(r % 4, dctx.rank)
        assert batch.routing is not None
        for li, (ids, gw) in enumerate(batch.routing):
            x = batch.x
            for p, m in models.items():
                times[p][r, li] = _timed_layer(m, li, x, ids, gw, batch.gtok, off)
            for p, t in _floors(models["fast"], li, x, ids, gw, batch.gtok).items():
                times[f"floor_{p}"][r, li] = t
    gathered = {}
    for k, v in times.items():
        t = torch.from_numpy(v)
        out = [torch.empty_like(t) for _ in range(g)]
        dist.all_gather(out, t)
        gathered[k] = torch.stack(out).max(0).values.numpy()  # slowest rank per repeat and layer
    if dctx.rank == 0:
        res = {k: float(np.median(v, axis=0).sum()) for k, v in gathered.items()}
        res.update({f"{p}_overhead_s": res[p] - res[f"floor_{p}"] for p in PATHS})
        res.update({f"{p}_overhead_seq_s": res[p] - res[f"floor_seq_{p}"] for p in PATHS})
        res["kernel"] = models["fast"].kernel
        atomic_write_text(Path(run_dir) / "overhead.json", json.dumps(res))
    dist.barrier()
