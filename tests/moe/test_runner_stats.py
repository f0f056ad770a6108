"""The trace config group, ``load_traces`` and ``mode=stats`` end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from common.errors import ConfigError, InputError
from common.experiment import run_experiment
from moe.trace import load_trace
from runners import moe_stats
from runners.hydra_entry import CONF_DIR
from runners.moe_inputs import load_trace_from_config, load_traces
from tests.conftest import REAL_TRACE, needs_real_trace

ROOT = Path(__file__).resolve().parents[2]


def trace_node(*overrides: str) -> dict:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="moe", overrides=["mode=stats", *overrides])
    return OmegaConf.to_container(cfg.trace, resolve=True)


def test_config_names() -> None:
    assert trace_node()["name"] == "deepseek_v2_lite"
    syn = trace_node("trace=synthetic", "trace.preset=olmoe")
    assert syn["_target_"].endswith("SyntheticTrace") and syn["preset"] == "olmoe"
    assert trace_node("trace=file", "trace.path=/x.npz")["path"] == "/x.npz"


def test_synthetic_traces_from_config() -> None:
    node = trace_node(
        "trace=synthetic", "trace.tokens=6000", "trace.drift=0.5", "trace.preset=deepseek_v2_lite"
    )
    prof, ev = load_traces(node, seed=0)
    assert prof.num_tokens + ev.num_tokens == 6000 and prof.num_experts == 64
    assert prof.num_prompts + ev.num_prompts == len(load_trace_from_config(node, 0).prompt_offsets) - 1
    again, _ = load_traces(node, seed=0)
    other, _ = load_traces(node, seed=1)  # trace.seed=null: derived from the run seed
    np.testing.assert_array_equal(prof.experts, again.experts)
    assert not np.array_equal(prof.experts[:100], other.experts[:100])
    capped = load_trace_from_config({**node, "max_tokens": 1000}, 0)
    assert capped.num_tokens == 1000


@needs_real_trace
def test_real_trace_from_config() -> None:
    node = trace_node("trace.max_tokens=30000", "trace.split_seed=3")
    prof, ev = load_traces(node, seed=0)
    assert prof.num_tokens + ev.num_tokens == 30000 and prof.top_k == 6


def test_bad_trace_configs() -> None:
    with pytest.raises(ConfigError, match=r"trace.*kind"):
        load_traces({"kind": "web"}, 0)
    with pytest.raises(ConfigError, match=r"trace\.preset.*mixtral_8x7b"):
        load_traces(trace_node("trace=synthetic", "trace.preset=gpt4"), 0)
    with pytest.raises(ConfigError, match=r"trace\.path.*not found"):
        load_traces(trace_node("trace=file", "trace.path=/nonexistent/t.npz"), 0)
    with pytest.raises(ConfigError, match=r"trace\.profile_fraction"):
        load_traces({**trace_node("trace=synthetic", "trace.tokens=500"), "profile_fraction": 1.5}, 0)


def test_file_trace_errors_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(InputError, match="broken.npz"):
        load_traces(trace_node("trace=file", f"trace.path={tmp_path / 'broken.npz'}"), 0)


def test_stats_body_writes_heatmaps_and_metrics(tmp_path: Path) -> None:
    node = trace_node("trace=synthetic", "trace.tokens=5000", "trace.preset=mixtral_8x7b")
    rec = run_experiment({"seed": 0, "mode": "stats", "trace": node}, "moe", moe_stats.run, tmp_path)
    for name in ("load_heatmap.png", "affinity_heatmap.png", "stats.npz", "result.json"):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "load_heatmap.png").read_bytes()[:4] == b"\x89PNG"
    m = rec.metrics
    assert m["tokens"] == 5000 and m["experts"] == 8 and m["imbalance_max_over_mean"] >= 1.0
    assert 0.0 <= m["affinity_mean"] <= 1.0
    with np.load(tmp_path / "stats.npz") as arrays:
        assert arrays["load"].shape == (32, 8) and arrays["load"].sum() == 5000 * 32 * 2
    assert len(rec.series["affinity"]) == 31


def _run(tmp_path: Path, *overrides: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "runners.moe", "mode=stats", *overrides, f"hydra.run.dir={tmp_path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((tmp_path / "result.json").read_text())


@pytest.mark.slow
def test_cli_synthetic(tmp_path: Path) -> None:
    rec = _run(tmp_path, "trace=synthetic", "trace.preset=mixtral_8x7b", "trace.tokens=20000")
    assert {"imbalance_max_over_mean", "affinity_mean"} <= set(rec["metrics"])
    assert (tmp_path / "affinity_heatmap.png").is_file()


@needs_real_trace
@pytest.mark.slow
def test_cli_real_trace(tmp_path: Path) -> None:
    rec = _run(tmp_path, "trace=deepseek_v2_lite")
    assert rec["metrics"]["tokens"] == load_trace(REAL_TRACE).num_tokens
    assert 1.2 < rec["metrics"]["imbalance_max_over_mean"] < 2.7


@pytest.mark.slow
def test_cli_reports_a_bad_path(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "runners.moe", "mode=stats", "trace=file", "trace.path=/nope.npz",
         f"hydra.run.dir={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2 and "trace.path" in proc.stderr and not (tmp_path / "result.json").exists()
