"""The placement runner (mode=place), the experiment presets and the paper comparison table."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob
from hydra.errors import ConfigCompositionException

from common.errors import ConfigError
from common.experiment import run_experiment
from moe.paper_numbers import PAPER_RESULTS
from moe.placement.base import Placement
from moe.placement.placer import build_placer
from moe.report import comparison_rows, moe_comparison_report, moe_comparison_table
from runners.hydra_entry import CONF_DIR, to_plain
from runners.moe_place import run
from tests.conftest import needs_real_trace

REPO = Path(__file__).resolve().parents[2]
PLACEMENTS = sorted(p.stem for p in (Path(CONF_DIR) / "placement").glob("*.yaml"))  # every option


def eval_override() -> str:
    """``eval=default`` once conf/moe.yaml lists the eval group, ``+eval=default`` before."""
    listed = "- eval:" in (Path(CONF_DIR) / "moe.yaml").read_text()
    return "eval=default" if listed else "+eval=default"


def config(*overrides: str) -> dict:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="moe", overrides=[eval_override(), *overrides])
    return to_plain(cfg)  # as the runner: the mode as its name


QUICK = (
    "trace=synthetic",
    "trace.tokens=6000",
    "trace.max_tokens=6000",
    "eval.batch_tokens=512",
    "topology=paper_multi_node",
)


def place(tmp_path: Path, name: str, *overrides: str, seed: int = 0) -> dict:
    cfg = config(*QUICK, f"placement={name}", f"seed={seed}", *overrides)
    run_dir = tmp_path / f"{name}-{seed}"
    run_experiment(cfg, "moe", run, run_dir=run_dir)
    return json.loads((run_dir / "result.json").read_text())


def test_run_records_every_metric_and_the_ratios(tmp_path):
    rec = place(tmp_path, "greedy")
    m = rec["metrics"]
    for key in (
        "balancedness_mean",
        "cross_gpu_tokens",
        "cross_node_tokens",
        "layer_time_tail_s",
        "speedup_vs_contiguous",
        "solve_time_s",
        "token_time_tail_reduction",
        "a2a_time_mean_reduction",
        "layer_time_tail_p99_s",
    ):
        assert key in m, key
    assert m["speedup_vs_contiguous"] == pytest.approx(
        m["contiguous_layer_time_tail_s"] / m["layer_time_tail_s"]
    )
    assert m["token_time_tail_reduction"] == pytest.approx(
        1 - m["token_time_tail_s"] / m["contiguous_token_time_tail_s"]
    )
    assert 0 < m["balancedness_mean"] <= 1
    # greedy balances load: at least as balanced as contiguous on the evaluation part, here strictly
    assert m["balancedness_mean"] > m["contiguous_balancedness_mean"]
    assert m["cross_node_tokens"] > 0  # two nodes
    assert len(rec["series"]["balancedness"]) == 32 and rec["series_step"]["balancedness"] == "layer"
    placement = Placement.load(tmp_path / "greedy-0" / "placement.json")
    assert (placement.name, placement.num_gpus, placement.num_layers) == ("greedy", 4, 32)
    with np.load(tmp_path / "greedy-0" / "costs.npz") as arrays:
        assert arrays["dispatch"].shape == (32, 4, 4) == arrays["contiguous_dispatch"].shape
    assert set(rec["artifacts"]) >= {"placement.json", "contiguous.json", "costs.npz"}


def test_contiguous_against_itself_is_exactly_one(tmp_path):
    m = place(tmp_path, "contiguous")["metrics"]
    assert m["speedup_vs_contiguous"] == 1.0
    assert m["layer_time_tail_reduction"] == 0.0
    assert "gap" not in m


def test_same_seed_gives_identical_metrics(tmp_path):
    a = place(tmp_path / "a", "random", seed=3)["metrics"]
    b = place(tmp_path / "b", "random", seed=3)["metrics"]
    for key in ("place_time_s", "solve_time_s"):
        a.pop(key), b.pop(key)
    assert a == b


def test_solver_placement_reports_gap_and_keeps_its_budget(tmp_path):
    rec = place(tmp_path, "moetuner", "placement.time_limit_s=3", "trace.max_tokens=3000")
    m = rec["metrics"]
    assert "gap" in m and m["solve_time_s"] >= 0
    assert m["place_time_s"] < 3 + 40  # the 3 s budget, not the default 60 s (wide margin: shared machines)
    assert rec["labels"]["status"] in ("optimal", "feasible", "time_limit")  # top-level, for tables
    assert m[f"status_{rec['labels']['status']}"] == 1.0
    rows = comparison_rows([rec]).to_dict("records")
    assert rows[0]["status"] == f"{rec['labels']['status']} 1"


def test_bad_topology_fails_before_any_output(tmp_path):
    cfg = config(*QUICK, "placement=greedy", "topology.ep_ranks=3")
    with pytest.raises(ConfigError, match="topology.ep_ranks"):
        run_experiment(cfg, "moe", run, run_dir=tmp_path)
    assert not (tmp_path / "result.json").exists()


def test_one_time_budget_per_placement():
    """``placement.time_limit_s`` is a field of every placement (one key, one check); presets set it."""
    assert build_placer(config("placement=moetuner")["placement"]).time_limit_s == 60.0
    assert build_placer(config("placement=exflow")["placement"]).time_limit_s == 30.0
    assert (
        build_placer(config("placement=greedy", "placement.time_limit_s=5")["placement"]).time_limit_s == 5.0
    )
    for preset in ("moetuner_single_node", "moetuner_multi_node", "moe_replan"):
        for name in ("moetuner", "exflow", "moetuner_plus", "contiguous"):
            cfg = config(f"experiment={preset}", f"placement={name}")
            assert build_placer(cfg["placement"]).time_limit_s == 10.0, (preset, name)
    for bad in ("-1", "0"):
        with pytest.raises(ConfigError, match=r"placement\.time_limit_s"):
            build_placer(config("placement=moetuner_plus", f"placement.time_limit_s={bad}")["placement"])


def test_the_old_cap_key_is_gone():
    with pytest.raises(ConfigCompositionException, match="placement_time_limit_s"):
        config("placement_time_limit_s=5")


@pytest.mark.parametrize("name", ["moetuner_single_node", "moetuner_multi_node"])
def test_presets_sweep_every_placement_both_traces_and_seeds(name):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            config_name="moe", overrides=[eval_override(), f"experiment={name}"], return_hydra_config=True
        )
    topo = "paper_single_node" if "single" in name else "paper_multi_node"
    assert cfg.topology.name == topo
    assert cfg.trace.max_tokens and cfg.placement.time_limit_s == 10 and cfg.eval.batch_tokens
    params = cfg.hydra.sweeper.params
    (sweep,) = OverridesParser.create().parse_overrides([f"placement={params.placement}"])
    assert isinstance(sweep.value(), Glob) and sweep.value().filter(PLACEMENTS) == PLACEMENTS  # a new one too
    assert params.trace.split(",") == ["synthetic", "deepseek_v2_lite"]
    assert len(str(params.seed).split(",")) >= 3


def fake_record(trace: str, topology: str, placement: str, seed: int, reduction: float) -> dict:
    metrics = {
        "token_time_tail_reduction": reduction,
        "token_time_mean_reduction": reduction / 2,
        "a2a_time_tail_reduction": reduction,
        "a2a_time_mean_reduction": reduction,
        "layer_time_tail_reduction": reduction,
        "speedup_vs_contiguous": 1 / (1 - reduction),
        "balancedness_mean": 0.9,
        "cross_gpu_tokens_vs_contiguous": 0.5,
        "solve_time_s": 1.0,
    }
    cfg = {
        "mode": "place",
        "trace": {"name": trace},
        "topology": {"name": topology},
        "placement": {"name": placement},
    }
    return {"suite": "moe", "config": cfg, "metrics": metrics, "seed": seed}


def test_comparison_rows_average_over_seeds_next_to_the_paper(tmp_path):
    records = [
        fake_record("deepseek_v2_lite", "paper_single_node", "moetuner", 0, 0.2),
        fake_record("deepseek_v2_lite", "paper_single_node", "moetuner", 1, 0.4),
        fake_record("deepseek_v2_lite", "paper_single_node", "greedy", 0, 0.1),
        {"suite": "fed", "config": {}, "metrics": {"accuracy": 1.0}, "seed": 0},  # ignored
    ]
    rows = comparison_rows(records).to_dict("records")
    assert [r["placement"] for r in rows] == ["greedy", "moetuner"]
    mt = rows[1]
    assert mt["seeds"] == 2
    assert mt["token_time_tail_reduction_mean"] == pytest.approx(0.3)
    assert mt["token_time_tail_reduction_std"] == pytest.approx(np.std([0.2, 0.4], ddof=1))
    assert mt["paper_token_time_tail_reduction"] == PAPER_RESULTS["single_node"]["token_time_tail_reduction"]
    assert np.isnan(rows[0]["paper_token_time_tail_reduction"])  # the paper reports MoETuner only
    paths = moe_comparison_table(records, tmp_path)
    assert [p.name for p in paths] == ["moe_comparison.csv", "moe_comparison.md"]
    with paths[0].open() as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 2 and table[0]["paper_token_time_tail_reduction"] == ""
    md = paths[1].read_text()
    assert "30.0% ± 14.1 [paper: 36.0%]" in md


def test_comparison_table_from_real_run_records(tmp_path):
    records = [place(tmp_path, name, seed=s) for name in ("contiguous", "greedy") for s in (0, 1)]
    rows = comparison_rows(records).to_dict("records")
    assert [(r["trace"], r["placement"], r["seeds"]) for r in rows] == [
        ("synthetic:mixtral_8x7b", "contiguous", 2),
        ("synthetic:mixtral_8x7b", "greedy", 2),
    ]
    assert rows[0]["speedup_vs_contiguous_mean"] == 1.0
    runs = [(name, s) for name in ("contiguous", "greedy") for s in (0, 1)]  # as ``records`` was made
    for rec, (name, seed) in zip(records, runs, strict=True):
        rec["path"] = str(tmp_path / f"{name}-{seed}" / "result.json")
    written = moe_comparison_report(records, tmp_path / "report")
    names = sorted(p.name for p in written)
    assert names == [
        "gpu_load_synthetic_mixtral_8x7b.png",
        "layer_time_synthetic_mixtral_8x7b.png",
        "moe_comparison.csv",
        "moe_comparison.md",
    ]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in written if p.suffix == ".png")


@pytest.mark.slow
@needs_real_trace
def test_cli_end_to_end_on_the_real_trace(tmp_path):
    cmd = [
        sys.executable, "-m", "runners.moe", "mode=place", "trace=deepseek_v2_lite", "trace.max_tokens=20000",
        "placement=greedy", "topology=h100_node8", eval_override(), "eval.batch_tokens=2048",
        f"hydra.run.dir={tmp_path}",
    ]  # fmt: skip
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    rec = json.loads((tmp_path / "result.json").read_text())
    assert rec["metrics"]["balancedness_mean"] > rec["metrics"]["contiguous_balancedness_mean"]


@pytest.mark.slow
def test_cli_bad_config_is_one_clear_line(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "runners.moe",
        "topology.ep_ranks=3",
        eval_override(),
        f"hydra.run.dir={tmp_path}",
    ]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 2
    assert "error: config key 'topology.ep_ranks'" in out.stderr
    assert not (tmp_path / "result.json").exists()


def test_trace_model_dims_replace_the_topology_values(tmp_path):
    import pytest

    from common.errors import ConfigError, InputError
    from moe.topology import Topology
    from moe.trace_source import FileTrace, trace_source

    topo = Topology(name="t", hidden_size=4096)
    src = FileTrace(path="x.npz", model={"hidden_size": 2048, "expert_ffn": 1408})
    out = src.topology_for(topo)
    assert out.bytes_per_token == 2048 * 2 and out.compute.expert_flops_per_token == 6 * 2048 * 1408
    assert topo.hidden_size == 4096  # the input is not modified
    trace_file = tmp_path / "t.npz"
    np.savez(trace_file, x=np.zeros(1))  # an .npz: the warning is about the missing dimensions, not the file
    assert FileTrace(path=str(trace_file)).topology_for(topo) is topo  # with a one-line warning
    with pytest.raises(ConfigError, match="trace.path"):  # a missing file is the error, before any warning
        FileTrace(path="x.npz").topology_for(topo)
    not_npz = tmp_path / "t.txt"
    not_npz.write_text("experts")
    with pytest.raises(InputError, match="not an .npz archive"):  # so is a file that is no .npz
        FileTrace(path=str(not_npz)).topology_for(topo)
    explicit = FileTrace(path="x.npz", model={"bytes_per_token": 1000, "expert_flops_per_token": 5e6})
    assert explicit.topology_for(topo).bytes_per_token == pytest.approx(1000)
    with pytest.raises(ConfigError, match="trace.model"):
        trace_source({"_target_": "moe.trace_source.FileTrace", "path": "x.npz", "model": {"hidden": 1}})


def test_placement_label_names_variants_in_tables():
    from moe.report import placement_label

    cfg = config("placement=moetuner_replicas")["placement"]
    assert placement_label(cfg) == "moetuner+replicas"
    assert placement_label({"name": "greedy"}) == "greedy"
    placer = build_placer(config("placement=moetuner_replicas")["placement"])
    assert placer.replicas == 4 and placer.table_label == "moetuner+replicas"
    assert "label" not in type(placer).names()  # the label is not an algorithm option
