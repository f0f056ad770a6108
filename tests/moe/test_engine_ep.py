"""The expert-parallel engine on 2 and 4 gloo ranks equals a single-process reference, and sends exactly the
token rows the cost model's dispatch matrix counts (same trace batch, same placement, ``token_movement=home``).

Placements cover replicas and unequal experts per rank; both routing modes (trace replay and the router).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from moe.cost_model import EvalOptions, evaluate_placement
from moe.engine.batches import BatchSource
from moe.engine.comm import PhaseClock, init_distributed
from moe.engine.measure import run_measurement
from moe.engine.model import ExpertParallelModel
from moe.engine.spec import EngineOptions, MoEModelSpec
from moe.placement.base import Placement
from moe.synthetic import ModelShape, generate_trace
from moe.topology import topology_from_config
from tests.moe.engine_harness import spawn_ranks

SPEC = MoEModelSpec(
    hidden_size=32, ffn_size=48, num_experts=8, top_k=2, num_layers=2, num_heads=4, num_shared_experts=1
)
BATCH = 128
PLACEMENTS = {
    2: [
        [[[0], [1, 2, 3, 4, 5, 6, 7]], [[0, 1, 2, 3, 4, 5], [6, 7]]],  # unequal experts per rank
        [[[0, 1, 2, 3, 4], [3, 4, 5, 6, 7]], [[0, 1, 2, 3, 4, 5, 6, 7], [0, 7]]],  # replicas
    ],
    4: [
        [[[0, 1], [2, 3], [4, 5], [6, 7]], [[7], [0, 1, 2], [3, 4], [5, 6]]],  # unequal
        [
            [[0, 1, 2], [2, 3, 4], [4, 5, 6], [6, 7, 0]],
            [[0, 1, 2, 3, 4, 5, 6, 7], [1], [2, 3], [4, 5, 6, 7, 0]],
        ],
    ],
}


def _trace() -> np.ndarray:
    shape = ModelShape("t", num_experts=SPEC.num_experts, top_k=SPEC.top_k, num_layers=SPEC.num_layers)
    return generate_trace(shape, 2 * BATCH, skew=1.0, seed=3).experts


def _ranks(
    rank: int, world: int, rule: str, path: str = "fast", overlap: str = "none"
) -> list[tuple[str, float, float, np.ndarray, np.ndarray]]:
    """Each routing x placement of ``PLACEMENTS[world]``: (routing, max abs err, max |ref|, sent, ids)."""
    dctx = init_distributed(EngineOptions(backend="gloo", device="cpu", timeout_s=30))
    node_of = np.arange(world) // 2  # two ranks per node: 'local' replica choice differs from 'even'
    out = []
    for routing, assignment in [(r, a) for r in ("trace", "router") for a in PLACEMENTS[world]]:
        placement = Placement(assignment, num_experts=SPEC.num_experts)
        model = ExpertParallelModel(
            SPEC, placement, rank, 7, dctx.device, dctx.dtype, 16, rule, node_of, path, "auto", overlap
        )
        src = BatchSource(BATCH, world, SPEC.hidden_size, 7, experts=_trace() if routing == "trace" else None)
        m = run_measurement(model, src, dctx, warmup=0, iters=2, barriers=True, check_reference=True, seed=7)
        out.append((routing, m.max_abs_err, m.ref_max_abs, m.sent, m.ids))
    return out


def _cost_dispatch(ids: np.ndarray, assignment: list, world: int, rule: str) -> np.ndarray:
    topo = topology_from_config(
        {"name": "t", "num_nodes": max(1, world // 2), "gpus_per_node": min(2, world), "intra_node_gbps": 100,
         "inter_node_gbps": 10, "hidden_size": SPEC.hidden_size, "dtype_bytes": 4,
         "compute": {"time_per_token_s": 1e-6}}
    )  # fmt: skip
    opts = EvalOptions(batch_tokens=BATCH, token_movement="home", replica_choice=rule)
    return evaluate_placement(ids, Placement(assignment, SPEC.num_experts), topo, opts).dispatch


@pytest.mark.parametrize(
    ("world", "rule", "path", "overlap"),
    [(2, "even", "fast", "none"), (4, "local", "fast", "none"), (2, "local", "legacy", "none"),
     (2, "even", "fast", "two_batch"), pytest.param(4, "local", "padded", "none", marks=pytest.mark.slow),
     (2, "even", "padded", "two_batch")],
)  # fmt: skip
def test_engine_equals_reference_and_cost_model_dispatch(
    world: int, rule: str, path: str, overlap: str
) -> None:
    results = spawn_ranks(_ranks, world, (rule, path, overlap), timeout_s=90)
    for i, (routing, err, scale, sent, ids) in enumerate(results[0]):
        k = i % len(PLACEMENTS[world])
        assert scale > 0.1, "the reference output is not trivially small"
        assert err <= 1e-5 * scale, f"placement {k}: max abs err {err} vs reference magnitude {scale}"
        assert ids.shape == (2 * BATCH, SPEC.num_layers, SPEC.top_k)
        if routing == "trace":
            np.testing.assert_array_equal(ids, _trace()[: 2 * BATCH])
        expected = _cost_dispatch(ids, PLACEMENTS[world][k], world, rule)
        np.testing.assert_array_equal(sent, expected)
        assert (sent * ~np.eye(world, dtype=bool)).sum() > 0, "some tokens cross ranks"
    # every rank gathered the same numbers
    for other in results[1:]:
        np.testing.assert_array_equal(other[0][3], results[0][0][3])


def _paths(rank: int, world: int) -> list[tuple[bool, bool, float, bool]]:
    """Per placement, fp32, trace routing: (two_batch == the same split without overlap bit for bit, and ==
    the unsplit batch within 1e-5; every kernel's output == the loop's within 1e-5; the legacy path's max abs
    difference from the fast path; the padded dispatch == the fast one bit for bit, unsplit and two_batch).

    Not bit for bit against the unsplit batch: CPU GEMMs compute a row with other micro-kernels when the
    group's row count changes (a row at the tail of a tile), so halving a batch moves the last bits."""
    dctx = init_distributed(EngineOptions(backend="gloo", device="cpu", timeout_s=30))
    node_of = np.zeros(world, dtype=np.int64)
    out = []
    for assignment in PLACEMENTS[world]:
        placement = Placement(assignment, num_experts=SPEC.num_experts)

        def run(path: str, kernel: str, overlap: str, pl: Placement = placement) -> torch.Tensor:
            m = ExpertParallelModel(
                SPEC, pl, rank, 7, dctx.device, dctx.dtype, 16, "even", node_of, path, kernel, overlap
            )
            src = BatchSource(BATCH, world, SPEC.hidden_size, 7, experts=_trace())
            return m.forward(src.batch(1, rank), PhaseClock(dctx.device, barriers=False)).out

        base = run("fast", "loop", "none")
        # lists, not generators: every rank must run every forward (collectives), whatever the outcome
        same = all(
            [torch.equal(run("fast", k, "two_batch"), run("fast", k, "split")) for k in ("loop", "auto")]
        )
        unsplit = run("fast", "auto", "none")
        close = torch.allclose(run("fast", "auto", "two_batch"), unsplit, rtol=1e-5, atol=1e-5)
        kernels = all(
            [torch.allclose(run("fast", k, "none"), base, rtol=1e-5, atol=1e-5) for k in ("auto", "bmm")]
        )
        padded = all(
            [torch.equal(run("padded", "auto", o), run("fast", "auto", o)) for o in ("none", "two_batch")]
        )
        out.append(
            (same and close, kernels, float((run("legacy", "auto", "none") - base).abs().max()), padded)
        )
    return out


@pytest.mark.parametrize("world", [2, pytest.param(4, marks=pytest.mark.slow)])
def test_overlap_is_bit_identical_and_kernels_and_paths_agree(world: int) -> None:
    for rank_result in spawn_ranks(_paths, world, timeout_s=90):
        for same, kernels, legacy_diff, padded in rank_result:
            assert same, "two_batch differs from the same split without overlap (or from the unsplit batch)"
            assert kernels, "grouped_mm / bmm differ from the per-expert loop"
            assert legacy_diff <= 1e-5
            assert padded, "the padded dispatch differs from the fast one"


def _real_shape(rank: int, world: int) -> tuple[float, float]:
    """One DeepSeek-V2-Lite-shaped layer (H 2048, F 1408, 64 experts, top-6, 2 shared) with replicas."""
    spec = MoEModelSpec(
        name="deepseek_v2_lite_shape", hidden_size=2048, ffn_size=1408, num_experts=64, top_k=6, num_layers=1,
        num_heads=16, num_shared_experts=2, renormalize=False,
    )  # fmt: skip
    dctx = init_distributed(EngineOptions(backend="gloo", device="cpu", timeout_s=300))
    placement = Placement([[list(range(40)), list(range(30, 64))]], num_experts=64)  # unequal, 10 replicas
    model = ExpertParallelModel(
        spec, placement, rank, 1, dctx.device, dctx.dtype, 64, "even", np.zeros(2, dtype=np.int64)
    )
    shape = ModelShape("d", num_experts=64, top_k=6, num_layers=1)
    src = BatchSource(256, world, spec.hidden_size, 1, experts=generate_trace(shape, 512, seed=2).experts)
    m = run_measurement(model, src, dctx, warmup=0, iters=1, barriers=True, check_reference=True, seed=1)
    return m.max_abs_err, m.ref_max_abs


@pytest.mark.slow
def test_real_shape_layer_equals_reference() -> None:
    err, scale = spawn_ranks(_real_shape, 2, timeout_s=600)[0]
    assert scale > 0.1
    assert err <= 1e-5 * scale, f"max abs err {err} vs reference magnitude {scale}"


def _bf16_odd_hidden(rank: int, world: int) -> tuple[bool, float]:
    """bf16 with an odd hidden size (33): the padded dispatch's header rows and the fast path's packed
    metadata both need an unaligned bit-cast. (padded == fast bit for bit, max |output|)."""
    spec = MoEModelSpec(
        hidden_size=33, ffn_size=48, num_experts=8, top_k=2, num_layers=2, num_heads=3, num_shared_experts=1
    )
    dctx = init_distributed(EngineOptions(backend="gloo", device="cpu", dtype="bfloat16", timeout_s=30))
    placement = Placement(PLACEMENTS[world][1], num_experts=spec.num_experts)
    node_of = np.zeros(world, dtype=np.int64)

    def run(path: str) -> torch.Tensor:
        m = ExpertParallelModel(spec, placement, rank, 7, dctx.device, dctx.dtype, 16, "even", node_of, path)
        src = BatchSource(BATCH, world, spec.hidden_size, 7, experts=_trace())
        return m.forward(src.batch(1, rank), PhaseClock(dctx.device, barriers=False)).out

    padded, fast = run("padded"), run("fast")
    return padded.dtype == torch.bfloat16 and torch.equal(padded, fast), float(fast.abs().max())


def test_padded_dispatch_runs_in_bf16_with_an_odd_hidden_size() -> None:
    for same, scale in spawn_ranks(_bf16_odd_hidden, 2, timeout_s=90):
        assert scale > 0.01
        assert same, "padded bf16 output differs from the fast path's"
