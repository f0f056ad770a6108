"""``python -m runners.moe mode=place|stats|replan ...``: the MoE placement benchmark.

The ``mode`` config group (``conf/mode/``) names each mode's function:
``mode=place`` (``runners.moe_place.run``, the default): profile on one part of a trace, place, evaluate on the rest.
``mode=stats`` (``runners.moe_stats.run``): routing statistics and heatmaps of a trace.
``mode=replan`` (``runners.moe_replan.run``): placement over time: windows, drift, re-placement policies, migration.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from common.experiment import RunContext, RunOutput
from runners.hydra_entry import CONF_DIR, hydra_cli, mode_function, run_from_hydra


def body(ctx: RunContext) -> RunOutput:
    """The run of ``ctx.config["mode"]`` (its function from ``conf/mode/<mode>.yaml``)."""
    return mode_function("moe", ctx.config.get("mode"))(ctx)


@hydra.main(config_path=CONF_DIR, config_name="moe", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_from_hydra(cfg, "moe", body)


if __name__ == "__main__":
    hydra_cli(main, "moe")
