"""The fast path's parts on one process: grouped GEMM equals the per-expert loop, the packed metadata survives
the bit-cast, the copies sort by expert without ``nonzero``; one-GPU multi-rank and NCCL refusal rules;
a placement file whose map contradicts its assignment is refused; the model follows the trace."""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from common.errors import ConfigError, InputError
from moe.engine import comm
from moe.engine.comm import resolve_backend
from moe.engine.compare import calibration_device, model_metrics
from moe.engine.dispatch import pack, received_copies, unpack
from moe.engine.experts import StackedExperts, grouped_mm_works
from moe.engine.placement_source import load_file
from moe.engine.spec import EngineOptions
from moe.engine.weights import expert_weights
from moe.placement.base import Placement
from runners.serve_shapes import follow_trace
from tests.conftest import REPO

H, F = 32, 48


def _copies(m: int, k: int, slots: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, int, list[int]]:
    """Random received rows ``[m, H]``, metadata ``[m, 2k]`` (some -1 slots), copies and per-slot counts."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn((m, H), generator=g)
    s = torch.randint(-1, slots, (m, k), generator=g, dtype=torch.int32)
    w = torch.rand((m, k), generator=g)
    meta = torch.cat([s, w.view(torch.int32)], dim=1)
    per = torch.bincount(s[s >= 0].long(), minlength=slots).tolist()
    return h, meta, int(sum(per)), per


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_metadata_survives_the_exchange_layout(dtype: torch.dtype) -> None:
    h, meta, _, _ = _copies(9, 3, 4, 0)
    x = h.to(dtype)
    got_h, got_meta = unpack(pack(x, meta), H)
    assert torch.equal(got_h, x) and torch.equal(got_meta, meta)


def test_copies_sort_by_slot_and_keep_row_and_weight() -> None:
    _, meta, copies, per = _copies(20, 4, 3, 1)
    rows, slots, w = received_copies(meta, 4, copies, 3)
    assert slots.tolist() == sorted(slots.tolist()) and torch.bincount(slots, minlength=3).tolist() == per
    s, wt = meta[:, :4], meta[:, 4:].view(torch.float32)
    expected = sorted((r, int(s[r, j]), float(wt[r, j])) for r in range(20) for j in range(4) if s[r, j] >= 0)
    got = sorted(zip(rows.tolist(), slots.tolist(), w.tolist(), strict=True))
    assert got == expected


@pytest.mark.parametrize("kernel", ["grouped_mm", "bmm"])
@pytest.mark.parametrize("slots", [1, 3, 5])
def test_grouped_kernels_equal_the_per_expert_loop(kernel: str, slots: int) -> None:
    experts = [expert_weights(4, 0, e, H, F) for e in range(slots)]
    h, meta, copies, per = _copies(40, 2, slots, slots)
    rows, sl, w = received_copies(meta, 2, copies, slots)
    loop = StackedExperts(experts, "loop").forward(h, rows, sl, w, per)
    st = StackedExperts(experts, kernel)
    if kernel == "grouped_mm" and not grouped_mm_works(st):
        pytest.skip("torch._grouped_mm does not run on this CPU build")
    got = st.forward(h, rows, sl, w, per)
    assert loop.abs().max() > 0.1
    torch.testing.assert_close(got, loop, rtol=1e-5, atol=1e-5)


def test_grouped_kernel_handles_empty_groups_and_no_copies() -> None:
    experts = [expert_weights(4, 0, e, H, F) for e in range(3)]
    h = torch.randn((5, H))
    rows, sl, w = torch.tensor([0, 3]), torch.tensor([2, 2]), torch.tensor([0.5, 1.0])
    for kernel in ("grouped_mm", "bmm"):
        st = StackedExperts(experts, kernel)
        if kernel == "grouped_mm" and not grouped_mm_works(st):
            continue
        ref = StackedExperts(experts, "loop").forward(h, rows, sl, w, [0, 0, 2])
        torch.testing.assert_close(st.forward(h, rows, sl, w, [0, 0, 2]), ref, rtol=1e-5, atol=1e-5)
        empty = st.forward(h, rows[:0], sl[:0], w[:0], [0, 0, 0])
        assert torch.equal(empty, torch.zeros_like(h))


def test_auto_kernel_picks_a_working_grouped_gemm() -> None:
    st = StackedExperts([expert_weights(4, 0, e, H, F) for e in range(2)], "auto")
    assert st.kernel == ("grouped_mm" if grouped_mm_works(st) else "bmm")


def test_several_ranks_share_one_gpu_over_gloo_and_nccl_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCAL_RANK", "3")
    backend, device, dtype = resolve_backend(
        EngineOptions(backend="gloo", device="cuda"), cuda=True, gpus=1, local_world=4
    )
    assert (backend, device, dtype) == ("gloo", torch.device("cuda", 0), torch.bfloat16)
    with pytest.raises(ConfigError, match="nccl needs one GPU per rank: 4 ranks per node, 1 GPU"):
        resolve_backend(EngineOptions(backend="nccl", device="cuda"), cuda=True, gpus=1, local_world=4)
    assert resolve_backend(EngineOptions(device="cuda"), cuda=True, gpus=8, local_world=4)[:2] == (
        "nccl", torch.device("cuda", 3))  # fmt: skip
    with pytest.raises(ConfigError, match="key .overlap.: two_batch needs"):
        EngineOptions(dispatch="legacy", overlap="two_batch")


NCCL_VARS = ("TORCH_NCCL_ASYNC_ERROR_HANDLING", "TORCH_NCCL_BLOCKING_WAIT")


class _Joined(Exception):
    """Raised by the recording ``init_process_group``: what init passed has been seen."""


@pytest.mark.parametrize(("backend", "blocking"), [("nccl", True), ("nccl", False), ("gloo", True)])
def test_nccl_failure_handling_is_set_by_config_before_the_group_is_made(
    monkeypatch: pytest.MonkeyPatch, backend: str, blocking: bool
) -> None:
    """No GPU here: the group's creation is recorded (backend, timeout, device, NCCL environment at that
    moment) instead of run. Gloo leaves the NCCL variables alone."""
    for var in NCCL_VARS:
        monkeypatch.setenv(var, "3")  # restored after the test
    device = torch.device("cuda", 0) if backend == "nccl" else torch.device("cpu")
    monkeypatch.setattr(comm, "resolve_backend", lambda *a, **k: (backend, device, torch.float32))
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: None)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    seen: dict = {}

    def record(**kwargs: object) -> None:
        seen.update(kwargs, env={v: os.environ[v] for v in NCCL_VARS})
        raise _Joined

    monkeypatch.setattr(dist, "init_process_group", record)
    opts = EngineOptions(
        backend=backend, timeout_s=7.5, nccl_blocking_wait=blocking, nccl_async_error_handling=1
    )
    with pytest.raises(_Joined):
        comm.init_distributed(opts)
    assert (seen["backend"], seen["timeout"]) == (backend, datetime.timedelta(seconds=7.5))
    if backend == "nccl":
        assert seen["device_id"] == device
        assert seen["env"] == {
            "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
            "TORCH_NCCL_BLOCKING_WAIT": str(int(blocking)),
        }
    else:
        assert seen["device_id"] is None and seen["env"] == dict.fromkeys(NCCL_VARS, "3")
    with pytest.raises(ConfigError, match="nccl_async_error_handling"):
        EngineOptions(nccl_async_error_handling=4)
    with pytest.raises(ConfigError, match="nccl_blocking_wait"):
        EngineOptions(nccl_blocking_wait="yes")  # type: ignore[arg-type]


def test_placement_file_whose_map_contradicts_its_assignment_is_refused(tmp_path: Path) -> None:
    p = Placement([[[0, 1], [2, 3]]], num_experts=4)
    good = p.save(tmp_path / "good.json")
    assert load_file(str(good)).assignment == p.assignment
    raw = json.loads(good.read_text())
    raw["physical_to_logical_map"] = [[0, 2, 1, 3]]
    (tmp_path / "bad.json").write_text(json.dumps(raw))
    with pytest.raises(
        InputError, match=r"contradicts assignment in layer 0, rank 0: map holds experts \[0, 2\]"
    ):
        load_file(str(tmp_path / "bad.json"))


TINY = {"_target_": "moe.engine.spec.MoEModelSpec", "name": "mixtral_tiny", "hidden_size": 64, "ffn_size": 128,
        "num_experts": 8, "top_k": 2, "num_layers": 2, "num_heads": 4}  # fmt: skip
SYN = {"_target_": "moe.trace_source.SyntheticTrace", "preset": "mixtral_8x7b"}


def test_model_follows_a_synthetic_preset_unless_one_is_named() -> None:
    cfg = {"seed": 0, "model": TINY, "trace": {**SYN, "preset": "deepseek_v2_lite"}}
    out = follow_trace(cfg, ["trace.preset=deepseek_v2_lite", "model.num_layers=1"])
    assert out["model"]["name"] == "deepseek_v2_lite_shape" and out["model"]["num_experts"] == 64
    assert out["model"]["num_layers"] == 1 and out["model_from"] == "preset:deepseek_v2_lite_shape"
    assert follow_trace({"seed": 0, "model": TINY, "trace": SYN}, [])["model_from"] == "default"
    named = follow_trace(
        {"seed": 0, "model": {**TINY, "num_experts": 64, "top_k": 6}, "trace": SYN}, ["model=x"]
    )
    assert (named["trace"]["num_experts"], named["trace"]["top_k"], named["trace"]["num_layers"]) == (
        64,
        6,
        2,
    )
    kept = follow_trace({"seed": 0, "model": TINY, "trace": {**SYN, "preset": "olmoe"}}, ["model=mixtral_tiny",
                        "trace.preset=olmoe"])  # fmt: skip
    assert kept["trace"].get("num_experts") is None  # both named: the run's trace check reports the mismatch


def test_model_follows_the_real_trace_file() -> None:
    path = REPO.parent / "shared" / "data" / "moe" / "deepseek_v2_lite_prefill.npz"
    if not path.is_file():
        pytest.skip(f"needs ../shared: {path} is absent")
    trace = {"_target_": "moe.trace_source.FileTrace", "name": "deepseek_v2_lite", "path": str(path),
             "slot_order": "unordered", "model": {"hidden_size": 2048, "expert_ffn": 1408}}  # fmt: skip
    out = follow_trace({"seed": 0, "model": TINY, "trace": trace}, ["trace=deepseek_v2_lite"])
    assert out["model"]["name"] == "deepseek_v2_lite_shape" and out["model"]["hidden_size"] == 2048
    other = follow_trace({"seed": 0, "model": TINY, "trace": {**trace, "name": "mine"}}, [])
    assert (other["model"]["num_experts"], other["model"]["top_k"], other["model"]["hidden_size"],
            other["model"]["ffn_size"], other["model_from"]) == (64, 6, 2048, 1408, "trace")  # fmt: skip
    assert np.isfinite(other["model"]["num_heads"])


class _Report:
    """The two things ``model_metrics`` reads of a cost report, for ``L`` layers."""

    def __init__(self, layers: int) -> None:
        self.series = list(np.linspace(1.0, 2.0, layers))
        self.dispatch = np.zeros((layers, 2, 2))

    def summary(self) -> dict[str, float]:
        return dict.fromkeys(
            ("layer_time_tail_s", "a2a_time_tail_s", "token_time_tail_s", "balancedness_mean"), 1.0
        )

    def layer_series(self) -> dict[str, list[float]]:
        return {"layer_time_tail_s": self.series}


def test_model_correlation_needs_a_calibration_here_and_eight_points(tmp_path: Path) -> None:
    sent = np.zeros((8, 2, 2))
    measured = list(np.linspace(1.0, 2.0, 8) ** 2)
    m = model_metrics(_Report(8), sent, measured, calibrated_here=True)  # type: ignore[arg-type]
    assert m["model_corr_points"] == 8 and 0.9 < m["model_layer_time_corr"] <= 1.0
    for report, meas, here in ((_Report(8), measured, False), (_Report(2), measured[:2], True)):
        m = model_metrics(report, sent[: len(meas)], meas, calibrated_here=here)  # type: ignore[arg-type]
        assert m["model_corr_points"] == 0 and np.isnan(m["model_layer_time_corr"])
    (tmp_path / "compute.yaml").write_text(
        "compute: {time_per_token_s: 1.0e-6}\ncalibration: {device_name: NVIDIA H100}\n"
    )
    assert calibration_device({"compute_file": str(tmp_path / "compute.yaml")}) == "NVIDIA H100"
    assert calibration_device({}) is None
