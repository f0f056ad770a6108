"""``python -m runners.fed mode=fl|local dataset=... partition=... augment=ggeur|none strategy=... model=...``.

The ``mode`` config group (``conf/mode/``) names each mode's function: ``mode=fl`` (the default,
``runners.fed_modes.fl``) and ``mode=local`` (``runners.fed_modes.local``), which also hold the recipe
(``build_parts``) that ``runners.fed_deploy`` shares.
"""

from __future__ import annotations

import os

import hydra
from omegaconf import DictConfig

from common.experiment import RunContext, RunOutput
from common.threads import limit_threads
from runners.fed_modes import build_parts, checkpoint_plan, classifier_model, label_resume
from runners.hydra_entry import CONF_DIR, hydra_cli, mode_function, run_from_hydra

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
__all__ = ["body", "build_parts", "checkpoint_plan", "classifier_model", "label_resume", "main"]


def body(ctx: RunContext) -> RunOutput:
    """The run of ``ctx.config["mode"]`` (its function from ``conf/mode/<mode>.yaml``)."""
    return mode_function("fed", ctx.config.get("mode"))(ctx)


@hydra.main(config_path=CONF_DIR, config_name="fed", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_from_hydra(cfg, "fed", body)


if __name__ == "__main__":
    limit_threads()
    hydra_cli(main, "fed")
