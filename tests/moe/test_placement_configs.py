"""Every placement preset composes against its schema, builds by instantiate, and places the real trace."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from common.config import build, registered
from common.errors import ConfigError
from moe.cost_model import EvalOptions
from moe.placement.placer import PlacementProblem, Placer
from moe.placement.profiled import ProfiledProblem
from moe.schemas import SCHEMAS
from moe.stats import cross_layer_counts, expert_load
from moe.topology import Topology
from runners.hydra_entry import CONF_DIR
from tests.conftest import real_trace_head

PRESETS = sorted(p.stem for p in (Path(CONF_DIR) / "placement").glob("*.yaml"))


@pytest.fixture(scope="module")
def problem() -> PlacementProblem:
    """The first 4,000 tokens and 3 layers of the real trace on one node of 4 EP ranks, with what the
    placements that search the cost model need (a ``ProfiledProblem``; the others see its base fields)."""
    ex, e = real_trace_head(4000, 3)
    topo = Topology(name="four", num_nodes=1, gpus_per_node=4, ep_ranks=4, intra_node_gbps=900.0)
    return ProfiledProblem(
        expert_load(ex, e), cross_layer_counts(ex, e), topo.bandwidth_gbps(), 4, 0,
        experts=ex, topology=topo, options=EvalOptions(batch_tokens=1000), slot_order="unordered",
    )  # fmt: skip


def node(name: str, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="moe", overrides=[f"placement={name}", *overrides])
    return cfg.placement


def test_every_schema_has_a_preset_and_every_preset_a_schema() -> None:
    names = {name for _, name in registered(SCHEMAS, "placement")}
    assert names <= set(PRESETS)
    for preset in PRESETS:
        assert OmegaConf.select(node(preset), "_target_"), preset


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_places_the_real_trace(name: str, problem: PlacementProblem) -> None:
    overrides = ["placement.time_limit_s=3"] if "time_limit_s" in node(name) else []
    placer = build(node(name, *overrides), "placement")
    assert isinstance(placer, Placer) and placer.table_label
    pl = placer.place(problem)
    assert pl.num_layers == 3 and pl.num_gpus == 4 and pl.num_experts == 64
    assert (pl.replica_counts() >= 1).all()
    if name in ("exflow", "moetuner", "moetuner_replicas"):  # solver-based: the solver's report
        for key in ("status", "objective", "bound", "gap", "solve_time_s", "size"):
            assert key in pl.info
    if name == "moetuner_plus":  # a search: where it started and what it kept
        assert {"status", "start", "solve_time_s"} <= set(pl.info)


def test_schema_converts_types_and_rejects_unknown_keys() -> None:
    assert node("moetuner", "placement.gap=0").gap == 0.0  # an int becomes the schema's float
    with pytest.raises(ConfigCompositionException):
        node("greedy", "placement.solver=highs")
    with pytest.raises(ConfigCompositionException):
        node("moetuner", "placement.replica=2")


def test_bad_values_name_the_full_key() -> None:
    with pytest.raises(ConfigError, match="'placement.gap'"):
        build(node("moetuner", "placement.gap=-1"), "placement")
    with pytest.raises(ConfigError, match="'placement.stage2'"):
        build(node("moetuner", "placement.stage2=annealing"), "placement")
    with pytest.raises(ConfigError, match="'placement.num_redundant'"):
        build(node("eplb", "placement.num_redundant=-1"), "placement")
