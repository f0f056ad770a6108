"""One rank of ``runners.serve``: config to engine, placement, measurement, cost-model comparison, record.

Every rank loads the same trace and config; rank 0 makes the placement (solvers are not deterministic under a
time limit) and broadcasts it; every rank checks it against the model; rank 0 alone writes the run record.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from common.atomic import atomic_savez
from common.config import build
from common.errors import ConfigError, InputError, SuiteError
from common.experiment import RunContext, RunOutput, run_experiment
from common.log import get_logger
from common.records import config_hash, find_complete_record
from moe.cost_model import eval_options_from_config
from moe.engine.batches import BatchSource, slots_ranked
from moe.engine.comm import DistContext, agree, init_distributed, rank_layout
from moe.engine.compare import calibration_device, engine_topology, model_metrics, model_report
from moe.engine.measure import Measurement, run_measurement, summarize
from moe.engine.model import ExpertParallelModel
from moe.engine.placement_source import check_placement, serve_placement
from moe.engine.spec import EngineOptions, MoEModelSpec
from moe.placement.base import Placement
from moe.topology import Topology
from moe.trace import Trace
from runners.moe_inputs import load_traces


class ReferenceMismatch(SuiteError):
    """The engine's output is not the reference's: the run fails (status failed, exit 2, one line)."""


BF16_TOLERANCE = 3e-2  # relative: bf16 keeps 8 bits of mantissa and the engine sums partials in another order
MOE_MODEL_TARGET = f"{MoEModelSpec.__module__}.{MoEModelSpec.__qualname__}"


def model_spec(cfg: Mapping[str, Any]) -> MoEModelSpec:
    """The ``model`` option as an MoE spec; a non-MoE model (a classifier) is refused in one line."""
    node = cfg.get("model")
    target = node.get("_target_") if isinstance(node, Mapping) else None
    if target != MOE_MODEL_TARGET:
        name = node.get("name") if isinstance(node, Mapping) else node
        raise ConfigError("model", f"'{name}' is not an MoE model; runners.serve needs one of the MoE shapes "
                                   "(mixtral_tiny, deepseek_v2_lite_shape, mixtral_8x7b_shape)")  # fmt: skip
    return build(node, "model")


@dataclass
class ServeSetup:
    """What every rank needs before placing: options, model spec, traces (first L layers), topology."""

    spec: MoEModelSpec
    opts: EngineOptions
    profile: Trace
    evaluation: Trace
    topology: Topology
    replica_choice: str
    calibrated_here: bool = False


def trace_config(cfg: Mapping[str, Any], spec: MoEModelSpec) -> dict[str, Any]:
    """The trace node (``runners.serve_shapes.follow_trace`` has already made it agree with the model)."""
    del spec
    return dict(cfg.get("trace") or {})


def check_trace(trace: Trace, spec: MoEModelSpec, routing: str) -> None:
    """The trace must have the model's experts and at least its layers (and its top-k when replayed)."""
    if trace.num_experts != spec.num_experts:
        raise InputError(
            f"trace has {trace.num_experts} experts per layer, model '{spec.name}' has {spec.num_experts}"
        )
    if trace.num_layers < spec.num_layers:
        raise InputError(f"trace has {trace.num_layers} layers, model '{spec.name}' has {spec.num_layers}")
    if routing == "trace" and trace.top_k != spec.top_k:
        raise InputError(
            f"trace replay: the trace chooses top-{trace.top_k}, model '{spec.name}' top-{spec.top_k}"
        )


def setup(cfg: Mapping[str, Any], opts: EngineOptions, dctx: DistContext) -> ServeSetup:
    spec = model_spec(cfg)
    profile, evaluation = load_traces(trace_config(cfg, spec), int(cfg["seed"]))
    check_trace(evaluation, spec, opts.routing)
    topology = engine_topology(
        cfg.get("topology") or {}, dctx.world_size, dctx.num_nodes, spec.hidden_size,
        torch.finfo(dctx.dtype).bits // 8, spec.expert_flops_per_token,
    )  # fmt: skip
    rule = eval_options_from_config(cfg.get("eval")).replica_choice
    here = calibration_device(cfg.get("topology") or {}) == dctx.device_name
    return ServeSetup(spec, opts, profile, evaluation, topology, rule, here)


def broadcast_placement(make: Any, dctx: DistContext) -> Placement:
    """``make()`` on rank 0, sent to every rank (as its dict); an input error there stops every rank."""
    raw = agree(lambda: make().to_dict(), src=0)
    assert raw is not None
    return Placement(raw["assignment"], raw["num_experts"], raw["name"], raw["info"])


def measure_placement(s: ServeSetup, placement: Placement, dctx: DistContext, seed: int) -> Measurement:
    """Check ``placement``, build this rank's model and run the measured iterations."""
    agree(lambda: check_placement(placement, s.spec, dctx.world_size, s.opts.require_experts_on_every_rank))
    model = ExpertParallelModel(
        s.spec, placement, dctx.rank, seed, dctx.device, dctx.dtype, s.opts.seq_len, s.replica_choice,
        s.topology.node_of(), s.opts.dispatch, s.opts.experts, s.opts.overlap,
    )  # fmt: skip
    layers = s.spec.num_layers
    ev = s.evaluation
    source = BatchSource(
        s.opts.batch_tokens, dctx.world_size, s.spec.hidden_size, seed,
        experts=ev.experts[:, :layers] if s.opts.routing == "trace" else None,
        weights=None if ev.weights is None else ev.weights[:, :layers],
        ranked=slots_ranked(ev), renormalize=s.spec.renormalize,
    )  # fmt: skip
    meas = run_measurement(
        model, source, dctx, s.opts.warmup_iters, s.opts.measure_iters, s.opts.phase_barriers,
        s.opts.check_reference, seed,
    )  # fmt: skip
    meas.kernel = model.kernel
    return meas


def placement_metrics(s: ServeSetup, placement: Placement, meas: Measurement) -> tuple[dict, dict, Any]:
    """Measured and modelled metrics of one placement (rank 0), plus its per-layer series and cost report."""
    metrics, series = summarize(meas, s.opts.batch_tokens)
    report = model_report(meas.ids, placement, s.topology, s.opts.batch_tokens, s.replica_choice)
    metrics.update(model_metrics(report, meas.sent, series["layer_time_tail_s"], s.calibrated_here))
    series["model_layer_time_tail_s"] = report.layer_series()["layer_time_tail_s"]
    if s.opts.check_reference:
        tol = s.opts.tolerance if meas.dtype == torch.float32 else max(s.opts.tolerance, BF16_TOLERANCE)
        ok = meas.max_abs_err <= tol * max(meas.ref_max_abs, 1.0)
        metrics["reference_ok"] = float(ok)
        if not ok:
            raise ReferenceMismatch(
                f"placement '{placement.name}': engine output differs from the single-process reference by "
                f"{meas.max_abs_err:.3g} (allowed {tol:.3g} x max(|ref|={meas.ref_max_abs:.3g}, 1), "
                "engine.tolerance); no record written"
            )
    return metrics, series, report


def runtime_info(dctx: DistContext) -> dict[str, Any]:
    """World size, backend and each rank's device name (gathered)."""
    names = [None] * dctx.world_size
    dist.all_gather_object(names, dctx.device_name)
    return {"world_size": dctx.world_size, "num_nodes": dctx.num_nodes, "backend": dctx.backend,
            "device": dctx.device.type, "dtype": str(dctx.dtype).removeprefix("torch."), "device_names": names}  # fmt: skip


def run_labels(cfg: Mapping[str, Any], dctx: DistContext, opts: EngineOptions, kernel: str) -> dict[str, str]:
    """What ran, as the record's labels: device, dtype, backend, rank layout, engine path and model source."""
    return {"device": dctx.device_name, "device_type": dctx.device.type,
            "dtype": str(dctx.dtype).removeprefix("torch."), "backend": dctx.backend,
            "rank_layout": rank_layout(dctx), "dispatch": opts.dispatch, "expert_kernel": kernel,
            "overlap": opts.overlap, "phase_barriers": str(opts.phase_barriers).lower(),
            "model": str((cfg.get("model") or {}).get("name")), "model_from": str(cfg.get("model_from", "named"))}  # fmt: skip


def serve_one(
    ctx: RunContext | None, cfg: Mapping[str, Any], dctx: DistContext, opts: EngineOptions
) -> RunOutput:
    """``mode=serve``: one placement through the engine and the cost model."""
    s = agree(lambda: setup(cfg, opts, dctx))
    assert s is not None
    seed = int(cfg["seed"])
    placement = broadcast_placement(
        lambda: serve_placement(cfg.get("placement"), cfg.get("placement_file"), s.profile, s.spec.num_layers,
                                s.topology, seed, s.replica_choice),
        dctx,
    )  # fmt: skip
    meas = measure_placement(s, placement, dctx, seed)
    if ctx is None:
        return RunOutput(metrics={})
    metrics, series, report = placement_metrics(s, placement, meas)
    metrics["world_size"] = float(dctx.world_size)
    placement.save(ctx.artifact("placement.json"))
    bpt = s.topology.bytes_per_token
    metrics["dispatch_cross_rank_bytes"] = metrics["dispatch_cross_rank_tokens"] * bpt
    atomic_savez(ctx.artifact("engine.npz"), phase_s=meas.phase_s, step_s=meas.step_s, sent_rows=meas.sent,
                 sent_bytes=meas.sent * bpt, model_dispatch=report.dispatch, ids=meas.ids)  # fmt: skip
    ctx.logger.event(
        "engine", placement=placement.name, **{k: metrics[k] for k in ("step_time_s", "tokens_per_s")}
    )
    return RunOutput(metrics=metrics, series=series, series_step={k: "layer" for k in series},
                     labels=run_labels(cfg, dctx, opts, meas.kernel))  # fmt: skip


def run_ranked(cfg: dict[str, Any], run_dir: str, roots: list[str], body: Any) -> None:
    """Init the group, then rank 0 runs ``body`` under ``run_experiment`` (record), the others bare."""
    opts: EngineOptions = build(cfg["engine"], "engine")
    dctx = init_distributed(opts)
    cfg = {**cfg, "runtime": runtime_info(dctx)}
    done = [bool(cfg.get("resume")) and find_complete_record(roots, config_hash(cfg)) is not None]
    dist.broadcast_object_list(done, src=0)
    if done[0]:
        if dctx.rank == 0:
            run_experiment(cfg, "serve", lambda c: RunOutput({}), run_dir, resume=True, resume_roots=roots)
        return
    if dctx.rank != 0:
        body(None, cfg, dctx, opts)
        dist.barrier()
        return
    get_logger("serve").info(
        f"engine: {dctx.world_size} ranks, {dctx.backend}, {dctx.device_name}, {cfg['mode']}"
    )
    run_experiment(cfg, "serve", lambda ctx: body(ctx, cfg, dctx, opts), Path(run_dir))
    dist.barrier()


def serve_rank(cfg: dict[str, Any], run_dir: str, roots: list[str]) -> None:
    """The rank function of ``mode=serve``."""
    run_ranked(cfg, run_dir, roots, serve_one)
