"""``runners.moe mode=replan``: records per policy, budget 0 = static, unlimited = periodic, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from common.experiment import run_experiment
from runners.hydra_entry import CONF_DIR
from runners.moe_replan import run

REPO = Path(__file__).resolve().parents[2]
QUICK = (
    "mode=replan",
    "trace=synthetic",
    "trace.tokens=6000",
    "trace.tokens_per_prompt=100",
    "trace.windows=3",
    "trace.drift=0.5",
    "eval.batch_tokens=500",
    "topology=paper_multi_node",
    "placement=greedy",
)


def replan(tmp_path: Path, *overrides: str) -> dict:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = OmegaConf.to_container(compose(config_name="moe", overrides=[*QUICK, *overrides]), resolve=True)
    run_dir = tmp_path / "-".join(o.split("=")[1] for o in overrides)
    run_experiment(cfg, "moe", run, run_dir=run_dir)  # type: ignore[arg-type]
    return json.loads((run_dir / "result.json").read_text())


def test_policies_record_migration_and_budget_extremes(tmp_path: Path) -> None:
    static = replan(tmp_path, "replan.policy=static")
    periodic = replan(tmp_path, "replan.policy=periodic")
    zero = replan(tmp_path, "replan.policy=incremental", "replan.move_budget=0")
    unlimited = replan(tmp_path, "replan.policy=incremental", "replan.move_budget=null")
    m = static["metrics"]
    assert m["migrated_experts"] == 0 and m["migration_s"] == 0 and m["speedup_vs_static"] == 1.0
    p = periodic["metrics"]
    assert p["migrated_experts"] > 0 and p["migration_bytes"] == p["migrated_experts"] * p["expert_bytes"]
    assert p["expert_bytes"] == 352321536 / 2 * 2  # Mixtral expert: 3 x 4096 x 14336 bf16 weights
    assert len(periodic["series"]["layer_time_tail_s"]) == 2  # windows 1 and 2 are served
    assert periodic["series"]["migrated_experts"][0] == 0  # the first served placement is the initial one
    for key in ("layer_time_tail_s", "migrated_experts", "migration_bytes", "speedup_vs_static"):
        assert zero["metrics"][key] == m[key]
        assert unlimited["metrics"][key] == p[key]
    assert unlimited["labels"] == {"policy": "incremental", "move_budget": "unlimited"}


def test_incremental_stays_within_its_budget(tmp_path: Path) -> None:
    rec = replan(tmp_path, "replan.policy=incremental", "replan.move_budget=1", "placement=eplb")
    layers = 32  # synthetic mixtral_8x7b
    assert (
        rec["metrics"]["migrated_experts"] <= 1 * layers
    )  # one re-placement (window 2), <= 1 copy per layer
    assert rec["metrics"]["replan_time_s"] > 0


@pytest.mark.parametrize(
    ("override", "key"),
    [("trace.windows=100", "trace.windows"), ("replan.move_budget=-1", "replan.move_budget"),
     ("trace.drift=2", "trace.drift")],
)  # fmt: skip
def test_bad_input_is_one_error_line_naming_the_key(tmp_path: Path, override: str, key: str) -> None:
    cmd = [sys.executable, "-m", "runners.moe", *QUICK, override, f"hydra.run.dir={tmp_path}"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 2, out.stderr
    assert f"error: config key '{key}'" in out.stderr
    assert not (tmp_path / "result.json").exists()


def test_report_draws_one_figure_per_trace_and_topology(tmp_path: Path) -> None:
    from moe.replan_report import replan_report, window_curves

    def rec(policy: str, topo: str, times: list[float]) -> dict:
        cfg = {"mode": "replan", "trace": {"name": "t", "drift": 0.1}, "topology": {"name": topo},
               "placement": {"name": "eplb"}, "replan": {"policy": policy}}  # fmt: skip
        return {"suite": "moe", "config": cfg, "series": {"layer_time_tail_s": times}}

    records = [
        rec("static", "a", [1.0, 2.0]),
        rec("periodic", "a", [1.0, 1.5]),
        rec("static", "b", [3.0, 3.0]),
    ]
    curves = window_curves(records)
    assert curves[("t on a", "eplb", 0.1)]["periodic"].tolist() == [1.0, 1.5]
    paths = replan_report(records, tmp_path)
    assert sorted(p.name for p in paths) == [
        "layer_time_per_window_t_on_a.png",
        "layer_time_per_window_t_on_b.png",
    ]
