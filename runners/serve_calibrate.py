"""``python -m runners.serve mode=calibrate model=deepseek_v2_lite_shape``: expert compute time vs token count.

Measures one routed expert of the model's real shape for ``calibrate.token_counts`` tokens (CUDA events on a
GPU; without one, on this CPU, and it says so), fits ``launch_s + per_token_s * n``, and writes
``compute.yaml``, a topology override that ``runners.moe`` / ``runners.serve`` load with
``topology.compute_file=<run dir>/compute.yaml``.
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import OmegaConf

from common.atomic import atomic_write_text
from common.config import build
from common.errors import ConfigError
from common.experiment import RunContext, RunOutput
from common.log import get_logger
from common.threads import limit_threads
from moe.engine.calibrate import fit_compute, time_expert
from moe.engine.spec import EngineOptions
from moe.engine.weights import expert_weights
from runners.serve_body import model_spec


def calibration_device(choice: str) -> torch.device:
    """``auto``: CUDA when present, else the CPU; ``cuda`` without a GPU is a ``ConfigError``."""
    if choice not in ("auto", "cpu", "cuda"):
        raise ConfigError("calibrate.device", f"expected auto, cpu or cuda, got {choice!r}")
    cuda = torch.cuda.is_available()
    if choice == "cuda" and not cuda:
        raise ConfigError(
            "calibrate.device", "cuda asked for but no CUDA GPU is available here (use auto or cpu)"
        )
    return torch.device("cuda") if (choice != "cpu" and cuda) else torch.device("cpu")


def _counts(cal: dict[str, Any]) -> list[int]:
    counts = cal.get("token_counts") or []
    if not counts or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in counts):
        raise ConfigError("calibrate.token_counts", f"expected a list of positive integers, got {counts!r}")
    return sorted(set(counts))


def _repeats(cal: dict[str, Any]) -> int:
    repeats = cal.get("repeats", 5)
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ConfigError("calibrate.repeats", f"expected a positive integer, got {repeats!r}")
    return repeats


def calibrate_body(ctx: RunContext) -> RunOutput:
    limit_threads()
    cfg = ctx.config
    spec = model_spec(cfg)
    opts: EngineOptions = build(cfg["engine"], "engine")
    cal = dict(cfg.get("calibrate") or {})
    device = calibration_device(cal.get("device", "auto"))
    repeats, counts = _repeats(cal), _counts(cal)  # every value checked before the first warning
    log = get_logger("serve")
    if device.type == "cpu":
        log.warning("calibrate: no CUDA GPU used: measuring on this CPU (fp32); these times describe the CPU")
    dtype = (
        getattr(torch, opts.dtype)
        if opts.dtype != "auto"
        else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    )
    w = expert_weights(ctx.seed, 0, 0, spec.hidden_size, spec.ffn_size).to(device, dtype)
    times = []
    for n in counts:
        times.append(time_expert(w, n, repeats, device, dtype))
        log.info(f"calibrate: {n} tokens: {times[-1] * 1e3:.3f} ms")
    fit = fit_compute(counts, times)
    typical = cal.get("typical_tokens") or max(1, opts.batch_tokens * spec.top_k // spec.num_experts)
    tpt = fit.effective_time_per_token(typical)
    text = OmegaConf.to_yaml({
        "compute": {"time_per_token_s": tpt},
        "calibration": {"model": spec.name, "hidden_size": spec.hidden_size, "ffn_size": spec.ffn_size,
                        "device": device.type, "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                        "dtype": str(dtype).removeprefix("torch."), "launch_s": fit.launch_s,
                        "per_token_s": fit.per_token_s, "r2": fit.r2, "typical_tokens": int(typical),
                        "token_counts": counts, "seconds": times},
    })  # fmt: skip
    atomic_write_text(
        ctx.artifact("compute.yaml"), "# topology override: topology.compute_file=<this file>\n" + text
    )
    metrics = {"calib_time_per_token_s": tpt, "calib_launch_s": fit.launch_s, "calib_per_token_s": fit.per_token_s,
               "calib_r2": fit.r2, "calib_on_gpu": float(device.type == "cuda"), "calib_typical_tokens": float(typical)}  # fmt: skip
    series = {"calib_tokens": [float(c) for c in counts], "calib_time_s": times,
              "calib_time_per_token_s": [t / c for t, c in zip(times, counts, strict=True)]}  # fmt: skip
    return RunOutput(metrics=metrics, series=series, series_step={k: "token_count_index" for k in series})
