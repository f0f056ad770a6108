"""The uniform entry point and the Hydra placement configs."""

from __future__ import annotations

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from common.errors import ConfigError
from moe.placement.registry import OPTIONS, PLACEMENTS, make_placement
from moe.stats import cross_layer_counts, expert_load
from runners.hydra_entry import CONF_DIR
from tests.conftest import real_trace_head


@pytest.fixture(scope="module")
def arrays() -> tuple[np.ndarray, np.ndarray]:
    ex, e = real_trace_head(4000, 3)
    return expert_load(ex, e), cross_layer_counts(ex, e)


def _preset(name: str) -> dict:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name=f"placement/{name}")
    return OmegaConf.to_container(cfg.placement, resolve=True)


@pytest.mark.parametrize("name", sorted(PLACEMENTS))
def test_every_preset_places_the_real_trace(name: str, arrays) -> None:
    p, r = arrays
    opts = _preset(name)
    assert opts.pop("name") == name
    assert opts.pop("label") == name  # the table label, dropped by runners.moe_place.placement_spec
    assert set(opts) <= set(OPTIONS[name])
    if "time_limit_s" in opts:
        opts["time_limit_s"] = 3
    if name == "eplb":
        opts["num_redundant"] = 8
    pl = make_placement(name, p, r, np.full((8, 8), 900.0), 4, seed=0, **opts)
    assert pl.num_layers == 3 and pl.num_gpus == 8 and pl.num_experts == 64
    assert (pl.replica_counts() >= 1).all()
    if name in ("exflow", "moetuner"):
        for key in ("status", "objective", "bound", "gap", "solve_time_s", "size"):
            assert key in pl.info


def test_unknown_name_and_option() -> None:
    p, r, b = np.ones((2, 4)), np.ones((1, 4, 4)), np.full((2, 2), 1.0)
    with pytest.raises(ConfigError, match="placement.name"):
        make_placement("magic", p, r, b, 2)
    with pytest.raises(ConfigError, match="placement.solver.*unknown option for 'greedy'"):
        make_placement("greedy", p, r, b, 2, solver="highs")
    with pytest.raises(ConfigError, match="replica"):
        make_placement("moetuner", p, r, b, 2, replica=2)
