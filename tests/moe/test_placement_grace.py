"""GRACE-style placement: valid, affinity kept on-GPU, hot replicas, and built from its config."""

from __future__ import annotations

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from common.config import build
from common.errors import ConfigError
from moe.placement.evaluate import balancedness, cross_gpu_fraction
from moe.placement.grace import Grace, affinity_layer
from moe.placement.placer import PlacementProblem
from moe.placement.simple import contiguous
from moe.stats import cross_layer_counts, expert_load
from moe.synthetic import generate_trace
from runners.hydra_entry import CONF_DIR


@pytest.fixture(scope="module")
def problem() -> PlacementProblem:
    trace = generate_trace("deepseek_v2_lite", 6000, skew=1.0, affinity=0.9, seed=2)
    e = trace.num_experts
    ex = trace.experts[:, :6]
    return PlacementProblem(expert_load(ex, e), cross_layer_counts(ex, e), np.full((8, 8), 450.0), 4, 0)


def test_grace_keeps_affinity_on_gpu_and_replicates_hot_experts(problem):
    plain = Grace().place(problem)
    assert not plain.has_replicas and (plain.experts_per_gpu() == 8).all()
    base = contiguous(*problem.shape)
    assert cross_gpu_fraction(plain, problem.pairs) < cross_gpu_fraction(base, problem.pairs) - 0.02
    hot = Grace(replicas=8).place(problem)
    assert hot.has_replicas and hot.info["replicas_added"] > 0
    assert balancedness(hot, problem.load).mean() >= balancedness(plain, problem.load).mean()


def test_affinity_layer_follows_the_pairs_under_the_load_cap():
    incoming = np.array([[9.0, 0], [8, 0], [0, 7], [0, 6]])  # experts 0,1 come from GPU 0; 2,3 from GPU 1
    out = affinity_layer(incoming, np.ones(4), np.zeros(2, dtype=np.int64), 0.1, 0.0)
    np.testing.assert_array_equal(out, [0, 0, 1, 1])
    heavy = affinity_layer(incoming, np.array([10.0, 10, 1, 1]), np.zeros(2, dtype=np.int64), 0.1, 0.0)
    assert heavy[0] != heavy[1]  # both heavy experts on one GPU would break the load cap


def test_grace_builds_from_its_config_and_checks_options():
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="moe", overrides=["placement=grace", "topology=h100_node8"])
    placer = build(OmegaConf.to_container(cfg.placement, resolve=True), "placement")
    assert isinstance(placer, Grace) and placer.replicas == 8 and placer.table_label == "grace"
    with pytest.raises(ConfigError, match="load_slack"):
        Grace(load_slack=-1)
