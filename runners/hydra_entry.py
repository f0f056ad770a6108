"""Glue between Hydra and ``common.experiment``: config to plain dict, run folder, resume roots, errors.

Every Hydra runner ends in ``run_from_hydra(cfg, suite, body)``. Errors that are the user's input
(``SuiteError``, a missing ``???`` value, a bad interpolation) become one line ``error: ...`` on stderr and
exit status 2; nothing is written to the run record.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue, OmegaConfBaseException

from common.config import install_schemas
from common.errors import SuiteError
from common.experiment import RunContext, RunOutput, run_experiment
from common.records import RunRecord

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HYDRA_FULL_ERROR", "0")

# Every option schema of the suite's packages, in Hydra's ConfigStore before any config is composed.
install_schemas("common", "moe", "fedgeo")


def fail(message: str, status: int = 2) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``status``."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(status)


def to_plain(cfg: DictConfig) -> dict[str, Any]:
    """Resolve ``cfg`` into a plain dict, failing clearly on a missing or unresolvable value."""
    try:
        plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as exc:
        fail(
            f"missing required value for config key '{exc.full_key}' (set it on the command line: "
            f"{exc.full_key}=...)"
        )
    except InterpolationResolutionError as exc:
        fail(f"config key '{exc.full_key}' cannot be resolved: {exc.msg}")
    except OmegaConfBaseException as exc:
        fail(f"bad config: {exc}")
    assert isinstance(plain, dict)
    plain.pop("hydra", None)
    return plain  # type: ignore[return-value]


def run_from_hydra(cfg: DictConfig, suite: str, body: Callable[[RunContext], RunOutput]) -> RunRecord:
    """Run ``body`` in the current Hydra job's output folder and write its record."""
    from hydra.core.hydra_config import HydraConfig

    plain = to_plain(cfg)
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    cwd = Path(hc.runtime.cwd)
    is_multirun = str(hc.mode) == "RunMode.MULTIRUN"
    if plain.get("resume_dir"):
        roots = [Path(plain["resume_dir"])]
        roots = [r if r.is_absolute() else cwd / r for r in roots]
    else:
        roots = [cwd / "multirun", cwd / "outputs"]
    group = Path(hc.sweep.dir).name if is_multirun else None
    name = hc.job.override_dirname or hc.job.name
    try:
        return run_experiment(
            plain,
            suite,
            body,
            run_dir=run_dir,
            resume=bool(plain.get("resume", False)),
            resume_roots=roots,
            group=plain.get("logger", {}).get("group") or group,
            name=name,
        )
    except SuiteError as exc:
        fail(str(exc))


def check_group_overrides(argv: list[str], conf_dir: str = CONF_DIR) -> None:
    """Refuse ``group=option`` overrides whose option file does not exist, in one line, before Hydra runs.

    Handles sweeps (``placement=a,b``), ``+group=x`` and ``group=null``. Other overrides are left to Hydra.
    """
    conf = Path(conf_dir)
    groups = {p.relative_to(conf).as_posix() for p in conf.rglob("*") if p.is_dir()}
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        key = key.lstrip("+~")
        if key not in groups or value in ("", "null") or "(" in value:
            continue
        options = sorted(p.stem for p in (conf / key).glob("*.yaml"))
        for v in value.split(","):
            if v not in options:
                fail(f"config group '{key}' has no option '{v}' (choose from: {', '.join(options)})")


def hydra_cli(main: Callable[[], Any]) -> None:
    """Run a ``@hydra.main`` function after checking the command line's group overrides."""
    check_group_overrides(sys.argv[1:])
    main()
