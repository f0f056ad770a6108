"""Glue between Hydra and ``common.experiment``: config to plain dict, run folder, resume roots, errors.

Every Hydra runner ends in ``run_from_hydra(cfg, suite, body)``. Errors that are the user's input
(``SuiteError``, a missing ``???`` value, a bad interpolation) become one line ``error: ...`` on stderr and
exit status 2; nothing is written to the run record.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn

from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    InterpolationResolutionError,
    MissingMandatoryValue,
    OmegaConfBaseException,
)

from common.config import build, install_schemas
from common.errors import ConfigError, SuiteError
from common.experiment import RunContext, RunOutput, run_experiment
from common.log import announce, set_console_level
from common.records import RunRecord
from common.schemas import SCHEMAS as COMMON_SCHEMAS
from common.threads import limit_threads
from fedgeo.schemas import SCHEMAS as FEDGEO_SCHEMAS
from moe.schemas import SCHEMAS as MOE_SCHEMAS
from runners.job_line import job_line

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("WANDB_SILENT", "true")

# Every option schema of the suite: each package's one list (common/schemas.py, moe/schemas.py, fedgeo/schemas.py).
SCHEMAS: tuple[type, ...] = (*COMMON_SCHEMAS, *MOE_SCHEMAS, *FEDGEO_SCHEMAS)


def install() -> None:
    """Store every schema in Hydra's ``ConfigStore`` (``schema/<group>/<name>``) before any config is
    composed: called by ``hydra_cli`` and by what composes without it (the test fixture, benchmarks)."""
    install_schemas(*SCHEMAS)


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
    if isinstance(plain.get("mode"), Mapping):
        plain["mode"] = mode_name(plain["mode"])
    return plain  # type: ignore[return-value]


def mode_options(runner: str | None = None, conf_dir: str = CONF_DIR) -> dict[str, dict[str, Any]]:
    """The options of the ``mode`` group (``conf/mode/<name>.yaml``), ``{name: node}``; with ``runner``
    (``moe``, ``fed``, ``serve``) only that runner's: those whose function lives in a ``runners.<runner>_*``
    module."""
    out = {}
    for path in sorted((Path(conf_dir) / "mode").glob("*.yaml")):
        node = OmegaConf.to_container(OmegaConf.load(path))
        assert isinstance(node, dict)
        if runner is None or str(node.get("_target_", "")).startswith(f"runners.{runner}_"):
            out[path.stem] = node
    return out


def mode_name(node: Mapping[str, Any], conf_dir: str = CONF_DIR) -> Any:
    """The name of the ``mode`` option whose node is ``node`` (``place`` for ``conf/mode/place.yaml``): run
    records keep the name, as they did before modes were a config group (same config hash, same tables).
    A node that is no option's comes back unchanged (the runner refuses it)."""
    for name, option in mode_options(None, conf_dir).items():
        if dict(node) == option:
            return name
    return dict(node)


def mode_function(runner: str, name: Any, conf_dir: str = CONF_DIR) -> Callable[..., Any]:
    """The function of mode ``name`` of ``runners.<runner>`` (built from ``conf/mode/<name>.yaml``).

    Raises:
        ConfigError: ``name`` is not one of the runner's modes.
    """
    options = mode_options(runner, conf_dir)
    if not isinstance(name, str) or name not in options:
        raise ConfigError("mode", f"expected one of {sorted(options)}, got {name!r}")
    return build(options[name], "mode")


def check_mode_override(argv: list[str], runner: str, conf_dir: str = CONF_DIR) -> None:
    """Refuse ``mode=<name>`` (or a sweep ``mode=a,b``) that is not one of ``runners.<runner>``'s modes, in one
    line, before Hydra runs (another runner's mode composes but would fail late)."""
    options = sorted(mode_options(runner, conf_dir))
    for arg in argv:
        key, _, value = arg.partition("=")
        if key.lstrip("+~") != "mode" or not value or "(" in value:
            continue
        for v in value.split(","):
            if v not in options:
                fail(f"config key 'mode': expected one of {options}, got {v!r}")


def sweep_dir() -> Path | None:
    """This multirun's folder (absolute), ``None`` for a single run."""
    hc = HydraConfig.get()
    if str(hc.mode) != "RunMode.MULTIRUN":
        return None
    sweep = Path(hc.sweep.dir)
    return sweep if sweep.is_absolute() else Path(hc.runtime.cwd) / sweep


def job_roots(resume_dir: str | None) -> list[Path]:
    """``resume_roots`` of the current Hydra job."""
    hc = HydraConfig.get()
    return resume_roots(resume_dir, Path(hc.runtime.output_dir), sweep_dir(), Path(hc.runtime.cwd))


def announce_job(record: RunRecord) -> None:
    """The job's one console line (``runners.job_line``)."""
    hc = HydraConfig.get()
    sweep = sweep_dir()
    name = hc.job.override_dirname or hc.job.name
    announce(job_line(record, name, Path(hc.runtime.output_dir), sweep, hc.job.num if sweep else 0))


def resume_roots(resume_dir: str | None, run_dir: Path, sweep_dir: Path | None, cwd: Path) -> list[Path]:
    """Where finished jobs are looked for: ``resume_dir`` when the user names one (relative to the launch
    folder), else this sweep's own folder (a multirun) or this run's own folder. Never another sweep's."""
    if resume_dir:
        root = Path(resume_dir)
        return [root if root.is_absolute() else cwd / root]
    return [sweep_dir if sweep_dir is not None else run_dir]


def run_from_hydra(cfg: DictConfig, suite: str, body: Callable[[RunContext], RunOutput]) -> RunRecord:
    """Run ``body`` in the current Hydra job's output folder and write its record.

    With ``resume=true`` (the default) a job whose complete record (same config hash) is already in this
    sweep's folder (or in ``resume_dir``) is skipped; ``resume=false`` always runs.
    """
    plain = to_plain(cfg)
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    sweep = sweep_dir()
    roots = job_roots(plain.get("resume_dir"))
    group = sweep.name if sweep is not None else None
    name = hc.job.override_dirname or hc.job.name
    try:
        set_console_level((plain.get("log") or {}).get("level") or os.environ.get("SUITE_LOG_LEVEL", "INFO"))
        record = run_experiment(
            plain,
            suite,
            body,
            run_dir=run_dir,
            resume=bool(plain.get("resume", True)),
            resume_roots=roots,
            group=(plain.get("logger") or {}).get("group") or group,
            name=name,
        )
    except SuiteError as exc:
        fail(str(exc))
    announce_job(record)
    return record


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


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _override_key(exc: BaseException, cause: BaseException | None) -> str | None:
    """The key of the override Hydra could not apply, ``None`` when the error is about no override.

    From the OmegaConf error behind it when there is one (its ``full_key``); Hydra's own composition errors
    (``No match in the defaults list``, ``Could not override``) are raised without a cause or key attribute,
    so for them the key is read from the message, the only place Hydra 1.3 puts it.
    """
    full_key = getattr(cause, "full_key", None)
    if isinstance(cause, OmegaConfBaseException) and full_key:
        return str(full_key)
    text = str(exc)
    found = re.search(r"override '([^']+)'", text) or re.search(r"override ([^=\s]+)=", text)
    return found.group(1) if found else None


# Keys this suite renamed: the old name -> the key that replaced it (said when the old one is used).
RENAMED = {"placement_time_limit_s": "placement.time_limit_s"}


def composition_message(exc: BaseException, conf_dir: str = CONF_DIR) -> str:
    """One line for a config Hydra could not compose: the key, what is wrong, what to do."""
    cause = exc.__cause__ or exc.__context__
    name = _override_key(exc, cause)
    if name in RENAMED:
        return f"'{name}' was renamed: use {RENAMED[name]}=... (one budget per placement, docs/placement.md)"
    if name is None:
        detail = f" ({_first_line(cause)})" if cause is not None else ""
        return f"bad config: {_first_line(exc)}{detail}"
    groups = sorted(p.relative_to(conf_dir).as_posix() for p in Path(conf_dir).rglob("*") if p.is_dir())
    if "No match in the defaults list" in str(exc) or ("." not in name and name not in groups):
        return f"'{name}' is neither a config group nor a config key (groups: {', '.join(groups)})"
    if isinstance(cause, ConfigKeyError | ConfigAttributeError):  # an unknown key under struct mode
        group = name.split(".")[0]
        if group in groups:  # a group's keys are its schema's fields: '+key' would only fail later
            return (
                f"config key '{name}' does not exist (check its spelling; the keys of '{group}' are those of the "
                f"chosen option: python -m runners.<suite> {group}=<option> --cfg job -p {group})"
            )
        return f"config key '{name}' does not exist (check its spelling; to add a new key: +{name}=...)"
    return f"config key '{name}': {_first_line(cause) if cause is not None else _first_line(exc)}"


def hydra_cli(main: Callable[[], Any], runner: str | None = None) -> None:
    """Run a ``@hydra.main`` function after checking the command line's group overrides (``mode=`` against
    ``runner``'s modes when it is given) and installing the schemas (``install``).

    The console shows warnings, errors and one line per job; ``-v`` (or ``log.level=info|debug``) shows the
    details, which every run also writes to its ``events.jsonl``. A config Hydra cannot compose (unknown key or group, a value of the wrong type) and Ctrl-C each end in
    one ``error:`` line with exit status 2 (130 for Ctrl-C); completed records are never touched.
    """
    verbose = [a for a in sys.argv[1:] if a in ("-v", "--verbose")]
    sys.argv = [a for a in sys.argv if a not in verbose]
    os.environ["SUITE_LOG_LEVEL"] = "INFO" if verbose else os.environ.get("SUITE_LOG_LEVEL", "WARNING")
    set_console_level(os.environ["SUITE_LOG_LEVEL"])
    if runner is not None:
        check_mode_override(sys.argv[1:], runner)
    check_group_overrides(sys.argv[1:])
    limit_threads()
    install()
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let the errors reach this function instead of Hydra's printer
    try:
        main()
    except KeyboardInterrupt:
        fail("interrupted (Ctrl-C): completed runs keep their records; the interrupted run wrote none", 130)
    except (ConfigCompositionException, OverrideParseException, MissingConfigException) as exc:
        fail(composition_message(exc))
