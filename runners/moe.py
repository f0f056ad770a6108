"""``python -m runners.moe mode=place|stats|replan ...``: the MoE placement benchmark.

``mode=stats`` (runners.moe_stats): routing statistics and heatmaps of a trace.
``mode=place`` (runners.moe_place, the default): profile on one part of a trace, place, evaluate on the rest.
``mode=replan`` (runners.moe_replan): placement over time: windows, drift, re-placement policies, migration.
"""

from __future__ import annotations

import importlib

import hydra
from omegaconf import DictConfig

from common.config import install_schemas
from common.experiment import RunContext, RunOutput
from runners.hydra_entry import CONF_DIR, fail, hydra_cli, run_from_hydra

MODES = {"stats": "runners.moe_stats", "place": "runners.moe_place", "replan": "runners.moe_replan"}
install_schemas("moe")  # conf/{trace,topology,eval,placement}/*.yaml start from these schemas


def body(ctx: RunContext) -> RunOutput:
    mode = ctx.config.get("mode")
    if mode not in MODES:
        fail(f"config key 'mode': expected one of {sorted(MODES)}, got {mode!r}")
    return importlib.import_module(MODES[mode]).run(ctx)


@hydra.main(config_path=CONF_DIR, config_name="moe", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_from_hydra(cfg, "moe", body)


if __name__ == "__main__":
    hydra_cli(main)
