"""The engine's pure parts: send plans, gate weights for traces without weights, options, placement checks,
the compute fit, and the model-vs-measurement statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.errors import ConfigError, InputError
from moe.engine.batches import BatchSource, default_gate_weights, slots_ranked
from moe.engine.calibrate import fit_compute
from moe.engine.comm import resolve_backend
from moe.engine.compare import pearson, rank_agreement
from moe.engine.placement_source import check_placement, truncate
from moe.engine.routing import layer_routes, received_entries, send_plan
from moe.engine.spec import EngineOptions, MoEModelSpec
from moe.placement.base import Placement
from moe.trace import Trace
from runners.serve_compare import aggregate


def test_send_plan_dedupes_per_rank_and_carries_slots_and_weights() -> None:
    # rank 0 holds experts 0, 1; rank 1 holds 2, 3; expert 1 is replicated on rank 1 too
    p = Placement([[[0, 1], [1, 2, 3]]], num_experts=4)
    routes = layer_routes(p, np.zeros(2, dtype=np.int64), "even")[0]
    ids = torch.tensor([[0, 2], [2, 3], [1, 0]])
    w = torch.tensor([[0.7, 0.3], [0.6, 0.4], [0.5, 0.5]])
    gtok = torch.tensor([10, 11, 13])  # token 13 takes replica 13 % 2 = 1 of expert 1: rank 1
    plan = send_plan(ids, w, gtok, 0, routes)
    # token 0 -> ranks 0 and 1; token 1 -> rank 1 once (two experts there); token 2 -> ranks 0 (e0) and 1 (e1)
    assert plan.counts.tolist() == [2, 3]
    assert plan.rows.tolist() == [0, 2, 0, 1, 2]
    rows, slots, weights = received_entries(plan.meta, 2)
    got = sorted(zip(rows.tolist(), slots.tolist(), [round(x, 2) for x in weights.tolist()], strict=True))
    # rank 0's slots: e0 -> 0; rank 1's: e1 -> 0, e2 -> 1, e3 -> 2
    assert got == [(0, 0, 0.7), (1, 0, 0.5), (2, 1, 0.3), (3, 1, 0.6), (3, 2, 0.4), (4, 0, 0.5)]


def test_gate_weights_follow_the_trace_slot_order() -> None:
    np.testing.assert_allclose(default_gate_weights(2, ranked=False), [0.5, 0.5])
    np.testing.assert_allclose(default_gate_weights(2, ranked=True), [2 / 3, 1 / 3])
    t = Trace(np.zeros((4, 1, 1), dtype=np.uint8), num_experts=2)
    assert not slots_ranked(t)
    t.slot_order = "router"  # type: ignore[attr-defined]
    assert slots_ranked(t)
    t.slot_order = "unordered"  # type: ignore[attr-defined]
    assert not slots_ranked(t)


def test_batches_split_rows_over_ranks_and_cycle_the_trace() -> None:
    experts = np.arange(24, dtype=np.int64).reshape(12, 1, 2) % 8
    src = BatchSource(4, 2, 8, 0, experts=experts)
    assert src.num_batches == 3
    b = src.batch(4, 1)  # iteration 4 replays trace batch 1; rank 1 holds its rows 2..3
    assert b.gtok.tolist() == [6, 7]
    assert b.routing is not None and b.routing[0][0].tolist() == experts[6:8, 0].tolist()
    with pytest.raises(ConfigError, match="engine.batch_tokens"):
        BatchSource(5, 2, 8, 0)


def test_options_validate_and_backend_resolution() -> None:
    with pytest.raises(ConfigError, match="top_k"):
        MoEModelSpec(num_experts=2, top_k=3)
    with pytest.raises(ConfigError, match="batch_tokens"):
        EngineOptions(batch_tokens=100, seq_len=64)
    with pytest.raises(ConfigError, match="backend"):
        EngineOptions(backend="mpi")
    assert resolve_backend(EngineOptions(), cuda=False)[:2] == ("gloo", torch.device("cpu"))
    assert resolve_backend(EngineOptions(), cuda=False)[2] == torch.float32
    with pytest.raises(ConfigError, match="engine.backend"):
        resolve_backend(EngineOptions(backend="nccl"), cuda=False)
    with pytest.raises(ConfigError, match="engine.device"):
        resolve_backend(EngineOptions(device="cuda"), cuda=False)


def test_placement_checks_name_what_differs() -> None:
    spec = MoEModelSpec(num_experts=4, top_k=2, num_layers=1)
    ok = Placement([[[0, 1], [2, 3]]], num_experts=4, name="p")
    check_placement(ok, spec, 2, True)
    with pytest.raises(InputError, match="world size 4"):
        check_placement(ok, spec, 4, True)
    with pytest.raises(InputError, match="8 experts per layer"):
        check_placement(Placement([[list(range(8)), [0]]], num_experts=8, name="p"), spec, 2, True)
    empty = Placement([[[0, 1, 2, 3], []]], num_experts=4, name="p")
    with pytest.raises(InputError, match="rank 1 holds no expert in layer 0"):
        check_placement(empty, spec, 2, True)
    check_placement(empty, spec, 2, False)
    with pytest.raises(InputError, match="1 layers, the model needs 2"):
        truncate(ok, 2)


def test_compute_fit_recovers_launch_and_per_token_time() -> None:
    n = np.array([1, 4, 16, 64, 256])
    fit = fit_compute(n, 5e-5 + 2e-7 * n)
    assert fit.launch_s == pytest.approx(5e-5) and fit.per_token_s == pytest.approx(2e-7)
    assert fit.r2 == pytest.approx(1.0)
    assert fit.effective_time_per_token(100) == pytest.approx(2e-7 + 5e-7)
    assert fit_compute(n, 3e-7 * n - 1e-6).launch_s == 0.0  # a negative intercept is clipped


def test_rank_agreement_and_correlation() -> None:
    assert rank_agreement([1, 2, 3], [10, 20, 30]) == 1.0
    assert rank_agreement([1, 2, 3], [30, 20, 10]) == 0.0
    assert rank_agreement([1, 3, 2], [1, 2, 3]) == pytest.approx(2 / 3)
    assert np.isnan(rank_agreement([1], [2]))
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert np.isnan(pearson([1, 1], [1, 2]))


def test_aggregate_reports_reductions_against_contiguous_and_the_paper() -> None:
    def m(step: float, layer: float, model: float) -> dict[str, float]:
        return {"step_time_s": step, "tokens_per_s": 1 / step, "a2a_time_tail_s": layer / 2,
                "layer_time_tail_s": layer, "compute_time_tail_s": layer / 2, "model_layer_time_tail_s": model,
                "model_a2a_time_tail_s": model / 2}  # fmt: skip

    agg = aggregate({"contiguous": m(1.0, 1.0, 4.0), "moetuner": m(0.5, 0.5, 2.0)}, "paper_single_node")
    assert agg["moetuner_layer_time_tail_reduction"] == pytest.approx(0.5)
    assert agg["moetuner_model_layer_time_tail_reduction"] == pytest.approx(0.5)
    assert agg["model_rank_agreement"] == 1.0
    assert agg["paper_moetuner_a2a_time_tail_reduction"] == pytest.approx(0.363)
