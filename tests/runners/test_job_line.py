"""The job line's sweep size: the product of the sweep lists, ``glob(*)`` counted over the group's options."""

from __future__ import annotations

from pathlib import Path

from runners.hydra_entry import CONF_DIR
from runners.job_line import headline, sweep_size


def test_sweep_size_counts_glob_over_the_groups_options(tmp_path: Path) -> None:
    (tmp_path / "multirun.yaml").write_text(
        "hydra:\n  overrides:\n    task: ['seed=0,1,2']\n"
        "  sweeper:\n    params:\n      placement: glob(*,exclude=random)\n      trace: synthetic,deepseek_v2_lite\n"
    )
    placements = [p.stem for p in (Path(CONF_DIR) / "placement").glob("*.yaml")]
    assert "random" in placements
    assert sweep_size(tmp_path / "multirun.yaml") == (len(placements) - 1) * 2 * 3
    assert sweep_size(tmp_path / "missing.yaml") is None


def test_headline_names_the_replan_and_calibrate_metrics() -> None:
    """mode=replan, calibrate and compare records have no speedup_vs_contiguous; their lines still show a metric."""
    assert headline({"speedup_vs_static": 1.00292, "migrated_experts": 147.0}) == "speedup_vs_static=1.003"
    assert (
        headline({"calib_time_per_token_s": 1.2837e-4, "calib_r2": 0.97})
        == "calib_time_per_token_s=0.0001284"
    )
    assert headline({"speedup_vs_contiguous": 1.2, "speedup_vs_static": 0.9}) == "speedup_vs_contiguous=1.2"
    assert headline({"model_rank_agreement": 0.5, "placements_compared": 4.0}) == "model_rank_agreement=0.5"
    assert headline({"migrated_experts": [1, 2]}) == ""
