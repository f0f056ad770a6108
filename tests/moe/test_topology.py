"""Topology presets and ``topology_from_config``: shapes, bandwidths, compute model, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from common.errors import ConfigError
from moe.topology import topology_from_config
from runners.hydra_entry import CONF_DIR

PRESETS = sorted(p.stem for p in (Path(CONF_DIR) / "topology").glob("*.yaml"))
MIXTRAL_EXPERT_FLOPS = 6 * 4096 * 14336


def preset(name: str) -> dict:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name=f"topology/{name}")
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)["topology"]  # type: ignore[index]


def test_required_presets_exist():
    assert {"paper_single_node", "paper_multi_node", "h100_node8", "h100_cluster4x8"} <= set(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_builds(name):
    topo = topology_from_config(preset(name))
    assert topo.name == name
    bw = topo.bandwidth_gbps()
    g = topo.num_gpus
    assert bw.shape == (g, g)
    assert (np.diag(bw) == 0).all() and (bw[~np.eye(g, dtype=bool)] > 0).all()
    assert topo.bytes_per_token == 4096 * 2
    assert 0 < topo.time_per_token_s < 1e-3


def test_paper_single_node():
    topo = topology_from_config(preset("paper_single_node"))
    assert (topo.num_gpus, topo.num_nodes, topo.ranks_per_node, topo.tp_size) == (4, 1, 4, 2)
    off = ~np.eye(4, dtype=bool)
    assert (topo.bandwidth_gbps()[off] == 900).all()
    assert not topo.cross_node().any()
    # two GPUs per EP rank at half of 989 TFLOP/s
    assert topo.time_per_token_s == pytest.approx(MIXTRAL_EXPERT_FLOPS / (2 * 989e12 * 0.5))


def test_paper_multi_node_has_a_ninth_of_the_bandwidth_across_nodes():
    topo = topology_from_config(preset("paper_multi_node"))
    assert (topo.num_gpus, topo.num_nodes, topo.ranks_per_node, topo.tp_size) == (4, 2, 2, 4)
    np.testing.assert_array_equal(topo.node_of(), [0, 0, 1, 1])
    bw = topo.bandwidth_gbps()
    assert bw[0, 1] / bw[0, 2] == 9.0
    assert bw[2, 3] == 900 and bw[3, 0] == 100


def test_cluster_4x8():
    topo = topology_from_config(preset("h100_cluster4x8"))
    assert (topo.num_gpus, topo.num_nodes, topo.ranks_per_node, topo.tp_size) == (32, 4, 8, 1)
    assert topo.cross_node().sum() == 32 * 32 - 4 * 8 * 8
    assert topo.nic_gbps == 50


BASE = {
    "name": "t",
    "num_nodes": 2,
    "gpus_per_node": 4,
    "ep_ranks": 4,
    "intra_node_gbps": 100,
    "inter_node_gbps": 10,
    "hidden_size": 10,
    "dtype_bytes": 2,
    "compute": {"time_per_token_s": 1e-6},
}


def test_full_bandwidth_matrix_and_measured_compute():
    m = [[0, 5, 6, 7], [5, 0, 8, 9], [6, 8, 0, 1], [7, 9, 1, 0]]
    topo = topology_from_config({**BASE, "bandwidth_matrix": m})
    assert topo.bandwidth_gbps()[1, 3] == 9
    assert topo.time_per_token_s == 1e-6
    assert topo.bytes_per_token == 20


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"ep_ranks": 3}, "topology.ep_ranks"),
        ({"ep_ranks": 16}, "topology.ep_ranks"),
        ({"num_nodes": 0}, "topology.num_nodes"),
        ({"intra_node_gbps": -1}, "topology.intra_node_gbps"),
        ({"inter_node_gbps": None}, "topology.inter_node_gbps"),
        ({"bandwidth_matrix": [[0, 1], [1, 0]]}, "topology.bandwidth_matrix"),
        ({"compute": {"gpu_tflops": None}}, "topology.compute"),
        ({"link_model": "mesh"}, "topology.link_model"),
        (
            {"compute": {"expert_flops_per_token": 1, "gpu_tflops": 1, "efficiency": 2}},
            "topology.compute.efficiency",
        ),
        ({"compute": {"flops": 1}}, "topology.compute"),
        ({"bandwidth": 3}, "topology"),
        ({"name": ""}, "topology.name"),
    ],
)
def test_bad_config_names_the_key(change, key):
    with pytest.raises(ConfigError) as err:
        topology_from_config({**BASE, **change})
    assert err.value.key == key


def test_compute_file_from_a_calibration_replaces_the_compute_term(tmp_path):
    from moe.topology import topology_from_config

    path = tmp_path / "compute.yaml"
    path.write_text("# measured\ncompute:\n  time_per_token_s: 2.5e-07\n")
    topo = topology_from_config({"name": "x", "compute": {"gpu_tflops": 1}, "compute_file": str(path)})
    assert topo.compute.time_per_token_s == 2.5e-07
    path.write_text("compute: {}\n")
    with pytest.raises(ConfigError, match="topology.compute_file.*time_per_token_s"):
        topology_from_config({"name": "x", "compute_file": str(path)})
