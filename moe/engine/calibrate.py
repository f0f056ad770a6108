"""Expert compute time against token count, and the cost model's compute term fitted to it.

``time(n) = launch_s + per_token_s * n`` (least squares, both >= 0) is the least a compute model needs: GEMM
efficiency falls at small token counts, which the fixed term absorbs. The cost model charges
``load * time_per_token_s`` with no fixed term, so ``effective_time_per_token`` folds the launch cost in at a
typical load per expert: ``per_token_s + launch_s / typical_tokens``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from moe.engine.layers import swiglu
from moe.engine.weights import ExpertWeights


@dataclass(frozen=True)
class ComputeFit:
    """``time(n) = launch_s + per_token_s * n`` seconds for one expert on ``n`` tokens; ``r2`` of the fit."""

    launch_s: float
    per_token_s: float
    r2: float

    def effective_time_per_token(self, typical_tokens: float) -> float:
        return self.per_token_s + self.launch_s / max(float(typical_tokens), 1.0)


@torch.no_grad()
def time_expert(
    w: ExpertWeights, tokens: int, repeats: int, device: torch.device, dtype: torch.dtype
) -> float:
    """Median seconds of one SwiGLU expert on ``tokens`` tokens (CUDA events on a GPU, else perf_counter)."""
    x = torch.randn((tokens, w.gate.shape[1]), generator=torch.Generator().manual_seed(tokens)).to(
        device, dtype
    )
    swiglu(x, w)  # warm-up
    out = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            swiglu(x, w)
            end.record()
            torch.cuda.synchronize()
            out.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            swiglu(x, w)
            out.append(time.perf_counter() - t0)
    return float(np.median(out))


def fit_compute(tokens: Sequence[int], seconds: Sequence[float]) -> ComputeFit:
    """Non-negative least squares of ``seconds ~ launch + per_token * tokens``."""
    n = np.asarray(tokens, dtype=np.float64)
    t = np.asarray(seconds, dtype=np.float64)
    a = np.stack([np.ones_like(n), n], axis=1)
    (launch, per_token), *_ = np.linalg.lstsq(a, t, rcond=None)
    if launch < 0:
        launch, per_token = 0.0, float((t @ n) / (n @ n))
    if per_token < 0:
        launch, per_token = float(t.mean()), 0.0
    pred = launch + per_token * n
    ss = float(((t - t.mean()) ** 2).sum())
    r2 = 1.0 - float(((t - pred) ** 2).sum()) / ss if ss > 0 else 1.0
    return ComputeFit(float(launch), float(per_token), r2)
