"""``python -m runners.serve [mode=serve|compare|calibrate] model=... placement=... trace=...``: the EP engine.

Under ``torchrun --nproc-per-node N -m runners.serve ...`` every process is one rank (gloo on CPUs, NCCL on
GPUs, ``engine.backend``); without torchrun ``engine.nproc`` ranks are spawned here. Rank 0 writes the run
record (``suite: serve``). ``mode=calibrate`` runs in this process only. See docs/engine.md.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")  # no C++ warnings when a peer rank has gone
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from common.errors import RecordError, SuiteError
from common.records import read_record
from runners.hydra_entry import (
    CONF_DIR,
    announce_job,
    fail,
    hydra_cli,
    job_roots,
    mode_function,
    run_from_hydra,
    to_plain,
)
from runners.serve_body import MOE_MODEL_TARGET, model_spec
from runners.serve_launch import env_rank, launch_local, run_rank, under_torchrun
from runners.serve_shapes import follow_trace

IN_PROCESS = "calibrate"  # the mode that runs in this process; the others (serve, compare) on every rank


def _announce_done(run_dir: str) -> None:
    """Rank 0's one line per job, as ``run_from_hydra`` prints for the other runners."""
    try:
        record = read_record(run_dir)
    except RecordError:
        return
    announce_job(record)


@hydra.main(config_path=CONF_DIR, config_name="serve", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        plain = follow_trace(to_plain(cfg), list(HydraConfig.get().overrides.task))
        fn = mode_function("serve", plain.get("mode"))  # conf/mode/<mode>.yaml
        model_spec(plain)  # refuse a non-MoE model before any rank starts
    except SuiteError as exc:
        fail(str(exc))
    if plain["mode"] == IN_PROCESS:  # the followed config: the calibrated expert is the trace's model's
        run_from_hydra(OmegaConf.create(plain), "serve", fn)
        return
    run_dir = str(HydraConfig.get().runtime.output_dir)
    roots = [str(r) for r in job_roots(plain.get("resume_dir"))]
    if under_torchrun():
        run_rank(fn, plain, run_dir, roots)
        if env_rank() == 0:
            _announce_done(run_dir)
        return
    nproc = plain.get("engine", {}).get("nproc", 1)
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        fail(f"config key 'engine.nproc': expected a positive integer, got {nproc!r}")
    status = launch_local(fn, nproc, plain, run_dir, roots)
    if status:
        raise SystemExit(status)
    _announce_done(run_dir)


def check_model_override(argv: list[str], conf_dir: str = CONF_DIR) -> None:
    """Refuse ``model=<option>`` when that option is not an MoE model (e.g. a classifier), in one line."""
    for arg in argv:
        key, _, value = arg.partition("=")
        if key.lstrip("+") != "model" or not value:
            continue
        path = Path(conf_dir) / "model" / f"{value}.yaml"
        if not path.is_file():
            continue  # hydra_cli names the missing option
        target = OmegaConf.load(path).get("_target_")
        if target != MOE_MODEL_TARGET:
            fail(f"config key 'model': '{value}' is not an MoE model ({target}); runners.serve needs one of "
                 f"the MoE shapes: {', '.join(moe_model_options(conf_dir))}")  # fmt: skip


def moe_model_options(conf_dir: str = CONF_DIR) -> list[str]:
    """The ``model`` options whose target is the engine's MoE spec."""
    return sorted(p.stem for p in (Path(conf_dir) / "model").glob("*.yaml")
                  if OmegaConf.load(p).get("_target_") == MOE_MODEL_TARGET)  # fmt: skip


def _quiet_non_zero_ranks(argv: list[str]) -> list[str]:
    """Ranks other than 0 under torchrun write no Hydra folder: only rank 0 records the run."""
    if under_torchrun() and env_rank() != 0:
        return [*argv, "hydra.output_subdir=null", "hydra.run.dir=."]
    return argv


if __name__ == "__main__":
    sys.argv = [sys.argv[0], *_quiet_non_zero_ranks(sys.argv[1:])]
    check_model_override(sys.argv[1:])
    hydra_cli(main, "serve")
