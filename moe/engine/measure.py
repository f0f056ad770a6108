"""Warm-up and measured iterations on every rank, gathered into per-rank, per-layer phase times.

Per iteration and rank: step time (one forward through all layers) and, per layer, dispatch, expert compute and
combine seconds. ``summarize`` turns them into the run's metrics: per layer the tail (slowest rank) and the
mean over ranks, summed over layers and averaged over iterations, like the cost model's ``*_tail_s``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from moe.engine.batches import BatchSource
from moe.engine.comm import DistContext, PhaseClock
from moe.engine.model import ExpertParallelModel, reference_forward

PHASES = ("dispatch", "compute", "combine")


@dataclass
class Measurement:
    """Gathered on every rank. ``G`` ranks, ``I`` measured iterations, ``L`` layers, ``D`` distinct batches.

    Attributes:
        phase_s: float64 ``[G, I, L, 3]`` seconds of dispatch, compute, combine.
        step_s: float64 ``[G, I]`` seconds of each forward with the phase clocks (and their barriers).
        free_step_s: float64 ``[G, I]`` seconds of each forward again, with no phase clock and no barrier
            inside it (one barrier before each step, outside the clock): the step time a server would see.
        sent: int64 ``[L, G, G]`` token rows sent from rank a (row) to rank b over the first ``D`` measured
            iterations (``D`` = distinct batches; the diagonal stays local).
        ids: int64 ``[D * n, L, k]`` the expert choices of those batches, rows in token order.
        max_abs_err: largest ``|engine - reference|`` over measured batches (``nan`` without the check).
        ref_max_abs: largest ``|reference|`` (for a relative error).
        dtype: the compute dtype.
        kernel: the expert kernel that ran (set by the caller).
    """

    phase_s: np.ndarray
    step_s: np.ndarray
    free_step_s: np.ndarray
    sent: np.ndarray
    ids: np.ndarray
    max_abs_err: float
    ref_max_abs: float
    dtype: torch.dtype = torch.float32
    kernel: str = ""


def _gather(t: torch.Tensor, dctx: DistContext) -> torch.Tensor:
    """``[G, *t.shape]`` of every rank's ``t`` (same shape everywhere), on the CPU."""
    src = t.to(dctx.device).contiguous()
    out = [torch.empty_like(src) for _ in range(dctx.world_size)]
    dist.all_gather(out, src)
    return torch.stack([o.cpu() for o in out])


def _max(value: float, dctx: DistContext) -> float:
    t = torch.tensor([value], dtype=torch.float64, device=dctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def free_steps(model: ExpertParallelModel, source: BatchSource, dctx: DistContext, iters: int) -> np.ndarray:
    """Seconds of ``iters`` forwards (batch i) timed whole: no phase clocks or barriers inside a step."""
    off = PhaseClock(dctx.device, barriers=False, enabled=False)
    cuda = dctx.device.type == "cuda"
    out = np.zeros(iters)
    for i in range(iters):
        batch = source.batch(i, dctx.rank)
        if cuda:
            torch.cuda.synchronize()
        dist.barrier()
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            model.forward(batch, off)
            end.record()
            end.synchronize()
            out[i] = start.elapsed_time(end) / 1e3
        else:
            t0 = time.perf_counter()
            model.forward(batch, off)
            out[i] = time.perf_counter() - t0
    return out


def run_measurement(
    model: ExpertParallelModel,
    source: BatchSource,
    dctx: DistContext,
    warmup: int,
    iters: int,
    barriers: bool,
    check_reference: bool,
    seed: int,
) -> Measurement:
    """Run ``warmup`` then ``iters`` iterations (iteration i runs batch i in both) and gather the clocks."""
    clock = PhaseClock(dctx.device, barriers)
    distinct = iters if source.num_batches is None else min(iters, source.num_batches)
    g, layers = dctx.world_size, model.spec.num_layers
    phase = np.zeros((iters, layers, 3))
    step = np.zeros(iters)
    sent = np.zeros((layers, g), dtype=np.int64)
    ids: list[torch.Tensor] = []
    err, scale = float("nan"), 0.0
    spec = model.spec
    small = spec.num_layers * spec.num_experts * spec.hidden_size * spec.ffn_size <= 50_000_000
    cache: dict | None = {} if small else None  # big models: the reference makes one expert at a time
    for it in range(warmup + iters):
        m = it - warmup
        batch = source.batch(it if m < 0 else m, dctx.rank)
        s = clock.start()
        res = model.forward(batch, clock)
        i_step = clock.stop(s)
        secs = clock.seconds()
        if m < 0:
            continue
        step[m] = secs[i_step]
        phase[m] = np.array([[secs[i] for i in ph] for ph in res.phases])
        if m < distinct:
            sent += res.sent
            ids.append(torch.stack(res.ids, dim=1))
        if check_reference:
            ref = reference_forward(
                model.spec, model.dense, seed, batch, model.seq_len, dctx.device, dctx.dtype, cache
            )
            e = float((res.out.float() - ref.float()).abs().max())
            err = e if np.isnan(err) else max(err, e)
            scale = max(scale, float(ref.float().abs().max()))
    free = free_steps(model, source, dctx, iters)
    all_ids = _gather(torch.stack(ids).cpu(), dctx)  # [G, D, n/G, L, k]
    all_ids = all_ids.permute(1, 0, 2, 3, 4).reshape(-1, *all_ids.shape[3:])
    return Measurement(
        phase_s=_gather(torch.from_numpy(phase), dctx).numpy(),
        step_s=_gather(torch.from_numpy(step), dctx).numpy(),
        free_step_s=_gather(torch.from_numpy(free), dctx).numpy(),
        sent=_gather(torch.from_numpy(sent), dctx).numpy().transpose(1, 0, 2),
        ids=all_ids.numpy(),
        max_abs_err=_max(err, dctx) if check_reference else float("nan"),
        ref_max_abs=_max(scale, dctx) if check_reference else float("nan"),
        dtype=dctx.dtype,
    )


def summarize(meas: Measurement, batch_tokens: int) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Metrics and per-layer series of a measurement (seconds; tail = slowest rank, mean = over ranks)."""
    tail = meas.phase_s.max(axis=0)  # [I, L, 3]
    mean = meas.phase_s.mean(axis=0)
    step_tail = meas.free_step_s.max(axis=0)  # [I]
    phased = meas.step_s.max(axis=0)
    out: dict[str, float] = {
        "step_time_s": float(step_tail.mean()),
        "step_time_p50_s": float(np.percentile(step_tail, 50)),
        "step_time_phased_s": float(phased.mean()),
        "tokens_per_s": float(batch_tokens / step_tail.mean()),
        "measured_iterations": float(step_tail.size),
        "batch_tokens": float(batch_tokens),
    }
    for j, name in enumerate(PHASES):
        out[f"{name}_time_tail_s"] = float(tail[:, :, j].sum(axis=1).mean())
        out[f"{name}_time_mean_s"] = float(mean[:, :, j].sum(axis=1).mean())
    for kind in ("tail", "mean"):
        d, c, b = (out[f"{p}_time_{kind}_s"] for p in PHASES)
        out[f"a2a_time_{kind}_s"] = d + b
        out[f"layer_time_{kind}_s"] = d + c + b
    off = ~np.eye(meas.sent.shape[1], dtype=bool)
    out["dispatch_cross_rank_tokens"] = float((meas.sent * off).sum())
    if not np.isnan(meas.max_abs_err):
        out["max_abs_err_vs_reference"] = meas.max_abs_err
        out["max_rel_err_vs_reference"] = meas.max_abs_err / max(meas.ref_max_abs, 1e-30)
    series = {
        "layer_time_tail_s": tail.sum(axis=2).mean(axis=0).tolist(),
        "dispatch_time_tail_s": tail[:, :, 0].mean(axis=0).tolist(),
        "compute_time_tail_s": tail[:, :, 1].mean(axis=0).tolist(),
        "combine_time_tail_s": tail[:, :, 2].mean(axis=0).tolist(),
        "layer_time_mean_s": mean.sum(axis=2).mean(axis=0).tolist(),
    }
    return out, series
