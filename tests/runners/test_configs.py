"""Every config group option composes with its root config, and every experiment preset with its root."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from runners.hydra_entry import mode_function, mode_options
from tests.conftest import CONF_DIR

ROOTS = sorted(p.stem for p in CONF_DIR.glob("*.yaml") if p.stem != "base")
# Experiment presets name the root they belong to by their prefix.
EXPERIMENT_ROOT = {"moetuner": "moe", "moe": "moe", "ggeur": "fed", "serve": "serve"}


def root_groups(root: str) -> list[str]:
    """Groups in a root config's defaults list (``hydra/...`` and ``experiment`` left out)."""
    defaults = yaml.safe_load((CONF_DIR / f"{root}.yaml").read_text()).get("defaults", [])
    groups = []
    for item in defaults:
        if isinstance(item, dict):
            (key,) = item
            key = key.removeprefix("optional ").removeprefix("override ")
            if not key.startswith("hydra/") and key != "experiment":
                groups.append(key)
    return groups


def cases() -> list[tuple[str, str, str]]:
    out = []
    for root in ROOTS:
        for grp in root_groups(root):
            for option in sorted((CONF_DIR / grp).glob("*.yaml")):
                out.append((root, grp, option.stem))
    return out


def experiments() -> list[tuple[str, str]]:
    out = []
    for p in sorted((CONF_DIR / "experiment").glob("*.yaml")):
        prefix = p.stem.split("_")[0]
        out.append((EXPERIMENT_ROOT.get(prefix, "?"), p.stem))
    return out


def _compose(root: str, overrides: list[str], tmp_path: Path):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            config_name=root, overrides=[*overrides, f"hydra.run.dir={tmp_path}"], return_hydra_config=True
        )
    return cfg


def test_every_mode_is_one_runners_function_and_each_root_defaults_to_its_own(tmp_path):
    runners = {
        "moe": ["place", "replan", "stats"],
        "fed": ["fl", "local"],
        "serve": ["calibrate", "compare", "serve"],
    }
    assert sorted(mode_options()) == sorted(m for ms in runners.values() for m in ms)  # each in exactly one
    for runner, modes in runners.items():
        assert sorted(mode_options(runner)) == modes
        assert all(callable(mode_function(runner, m)) for m in modes)
        cfg = _compose(runner, [], tmp_path)
        assert cfg.hydra.runtime.choices.mode in modes and cfg.mode._target_.startswith(f"runners.{runner}_")


def test_roots_exist():
    assert {"moe", "fed"} <= set(ROOTS)


@pytest.mark.parametrize("root, group, option", cases())
def test_group_option_composes(root, group, option, tmp_path):
    cfg = _compose(root, [f"{group}={option}"], tmp_path)
    node = OmegaConf.select(cfg, group.replace("/", "."))
    assert node is not None, f"{root}: {group}={option} left no '{group}' node"
    assert isinstance(cfg.seed, int)


@pytest.mark.parametrize("root, name", experiments())
def test_experiment_preset_composes(root, name, tmp_path):
    assert root in ROOTS, f"experiment '{name}': its prefix names no root config ({EXPERIMENT_ROOT})"
    cfg = _compose(root, [f"experiment={name}"], tmp_path)
    assert cfg.hydra.sweeper.params, f"experiment '{name}' declares no sweep (hydra.sweeper.params)"


@pytest.mark.parametrize("kind", ["none", "wandb_offline", "wandb"])
def test_logger_group(kind, tmp_path):
    for root in ROOTS:
        assert _compose(root, [f"logger={kind}"], tmp_path).logger.kind == kind


@pytest.mark.parametrize(
    "launcher, target", [("sequential", "BasicLauncher"), ("parallel", "JoblibLauncher")]
)
def test_launchers_compose(launcher, target, tmp_path):
    cfg = _compose("moe", [f"hydra/launcher={launcher}"], tmp_path)
    assert cfg.hydra.launcher._target_.endswith(target)


def test_slurm_launcher_composes_when_plugin_installed(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="extra 'slurm' not installed")
    cfg = _compose("moe", ["hydra/launcher=slurm"], tmp_path)
    assert cfg.hydra.launcher.timeout_min == 60
