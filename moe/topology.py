"""The cluster that a placement runs on: EP ranks, nodes, link bandwidths, token size and expert compute.

Vocabulary. A *GPU* in the placement and cost-model code is an expert-parallel (EP) rank, the ``G`` of a
``Placement``. With tensor parallelism an EP rank is a group of ``tp_size`` physical GPUs in one node (the
paper's single-node setting: 8 H100 as 4 EP x 2 TP). EP ranks are laid out node by node: rank ``g`` lives on
node ``g // ranks_per_node``.

Communication: every ordered pair of EP ranks ``(a, b)``, ``a != b``, is a link of ``bandwidth_gbps()[a, b]``
GB/s (one direction; all links transfer in parallel). Optionally each rank has a network interface of
``nic_gbps`` GB/s per direction that all its cross-node traffic shares.

Compute: processing one token copy by one expert on one EP rank takes ``time_per_token_s`` seconds, either
measured and given, or ``expert_flops_per_token / (tp_size * gpu_tflops * 1e12 * efficiency)``.

Presets live in ``conf/topology/*.yaml``; ``topology_from_config`` turns such a node into a ``Topology``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from common.errors import ConfigError

GB = 1e9  # bytes per GB: bandwidths are in decimal GB/s, as vendors quote them

_KEYS = {
    "name",
    "num_nodes",
    "gpus_per_node",
    "ep_ranks",
    "intra_node_gbps",
    "inter_node_gbps",
    "bandwidth_matrix",
    "nic_gbps",
    "hidden_size",
    "dtype_bytes",
    "compute",
}
_COMPUTE_KEYS = {"expert_flops_per_token", "gpu_tflops", "efficiency", "time_per_token_s"}


@dataclass(frozen=True, eq=False)
class Topology:
    """A cluster of ``ep_ranks`` EP ranks over ``num_nodes`` nodes.

    Attributes:
        name: preset name (``paper_single_node``, ...).
        num_nodes: nodes.
        gpus_per_node: physical GPUs per node.
        ep_ranks: EP size, the placement's ``G``; a multiple of ``num_nodes`` that divides
            ``num_nodes * gpus_per_node``.
        intra_node_gbps: GB/s of a link between two ranks of one node (NVLink).
        inter_node_gbps: GB/s of a link between two ranks of different nodes (the network).
        bytes_per_token: bytes of one token's hidden state on the wire (hidden size x dtype size).
        time_per_token_s: seconds for one expert of one rank to process one token copy.
        bandwidth_matrix: optional full ``[G, G]`` GB/s matrix that replaces the intra/inter rule
            (the diagonal is ignored).
        nic_gbps: optional GB/s per direction of a rank's network interface, shared by all its cross-node
            traffic; ``None``: not modelled (only the pair links limit).
    """

    name: str
    num_nodes: int
    gpus_per_node: int
    ep_ranks: int
    intra_node_gbps: float
    inter_node_gbps: float
    bytes_per_token: float
    time_per_token_s: float
    bandwidth_matrix: np.ndarray | None = None
    nic_gbps: float | None = None

    # ------------------------------------------------------------------ shape
    @property
    def num_gpus(self) -> int:
        """G: EP ranks (the placement's GPUs)."""
        return self.ep_ranks

    @property
    def ranks_per_node(self) -> int:
        """EP ranks in one node (what the placement algorithms call ``gpus_per_node``)."""
        return self.ep_ranks // self.num_nodes

    @property
    def tp_size(self) -> int:
        """Physical GPUs per EP rank."""
        return self.gpus_per_node // self.ranks_per_node

    def node_of(self) -> np.ndarray:
        """int64 ``[G]``: the node of each EP rank."""
        return np.arange(self.ep_ranks, dtype=np.int64) // self.ranks_per_node

    def cross_node(self) -> np.ndarray:
        """bool ``[G, G]``: True where the two ranks are on different nodes."""
        n = self.node_of()
        return n[:, None] != n[None, :]

    # ------------------------------------------------------------------ links
    def bandwidth_gbps(self) -> np.ndarray:
        """float64 ``[G, G]``: GB/s of the link from rank a to rank b; the diagonal is 0 (no link: local)."""
        if self.bandwidth_matrix is not None:
            bw = np.array(self.bandwidth_matrix, dtype=np.float64)
        else:
            bw = np.where(self.cross_node(), self.inter_node_gbps, self.intra_node_gbps).astype(np.float64)
        np.fill_diagonal(bw, 0.0)
        return bw

    def bandwidth_bytes_per_s(self) -> np.ndarray:
        """float64 ``[G, G]``: bytes/s of every link (0 on the diagonal)."""
        return self.bandwidth_gbps() * GB

    def inverse_bandwidth_s_per_byte(self) -> np.ndarray:
        """float64 ``[G, G]``: seconds per byte of every link; 0 on the diagonal (local transfers are free)."""
        bw = self.bandwidth_bytes_per_s()
        off = ~np.eye(self.ep_ranks, dtype=bool)
        return np.where(off, 1.0 / np.where(off, bw, 1.0), 0.0)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (for run records and logs)."""
        return {
            "name": self.name,
            "num_nodes": self.num_nodes,
            "gpus_per_node": self.gpus_per_node,
            "ep_ranks": self.ep_ranks,
            "tp_size": self.tp_size,
            "intra_node_gbps": self.intra_node_gbps,
            "inter_node_gbps": self.inter_node_gbps,
            "nic_gbps": self.nic_gbps,
            "bytes_per_token": self.bytes_per_token,
            "time_per_token_s": self.time_per_token_s,
            "custom_bandwidth_matrix": self.bandwidth_matrix is not None,
        }


# ---------------------------------------------------------------------- config
def _int(cfg: Mapping[str, Any], key: str, prefix: str, minimum: int = 1) -> int:
    if key not in cfg or cfg[key] is None:
        raise ConfigError(f"{prefix}.{key}", f"required; expected an integer >= {minimum}")
    v = cfg[key]
    if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < minimum:
        raise ConfigError(f"{prefix}.{key}", f"expected an integer >= {minimum}, got {v!r}")
    return int(v)


def _pos(cfg: Mapping[str, Any], key: str, prefix: str, required: bool = True) -> float | None:
    v = cfg.get(key)
    if v is None:
        if required:
            raise ConfigError(f"{prefix}.{key}", "required; expected a positive number")
        return None
    if isinstance(v, bool) or not isinstance(v, int | float | np.number) or not np.isfinite(v) or v <= 0:
        raise ConfigError(f"{prefix}.{key}", f"expected a positive finite number, got {v!r}")
    return float(v)


def _time_per_token(compute: Any, tp_size: int, prefix: str) -> float:
    key = f"{prefix}.compute"
    if not isinstance(compute, Mapping):
        raise ConfigError(key, f"expected a mapping with {sorted(_COMPUTE_KEYS)}, got {compute!r}")
    unknown = set(compute) - _COMPUTE_KEYS
    if unknown:
        raise ConfigError(key, f"unknown keys {sorted(unknown)}; allowed: {sorted(_COMPUTE_KEYS)}")
    measured = _pos(compute, "time_per_token_s", key, required=False)
    if measured is not None:
        return measured
    flops = _pos(compute, "expert_flops_per_token", key, required=False)
    tflops = _pos(compute, "gpu_tflops", key, required=False)
    eff = _pos(compute, "efficiency", key, required=False)
    if flops is None or tflops is None or eff is None:
        raise ConfigError(
            key,
            "give either time_per_token_s (measured seconds per token per expert) or all of "
            "expert_flops_per_token, gpu_tflops and efficiency",
        )
    if eff > 1:
        raise ConfigError(f"{key}.efficiency", f"expected a fraction in (0, 1], got {eff}")
    return flops / (tp_size * tflops * 1e12 * eff)


def topology_from_config(cfg: Mapping[str, Any], prefix: str = "topology") -> Topology:
    """Build a ``Topology`` from a ``topology`` config node (plain dict), checking every field.

    Keys: ``name``, ``num_nodes``, ``gpus_per_node`` (physical), ``ep_ranks`` (default: all GPUs),
    ``intra_node_gbps``, ``inter_node_gbps`` (required when ``num_nodes > 1``), ``bandwidth_matrix``
    (optional ``[ep_ranks][ep_ranks]`` GB/s), ``nic_gbps`` (optional), ``hidden_size``, ``dtype_bytes``,
    ``compute`` (``time_per_token_s`` or ``expert_flops_per_token`` + ``gpu_tflops`` + ``efficiency``).

    Raises:
        ConfigError: naming ``topology.<key>`` and the expected form.
    """
    if not isinstance(cfg, Mapping):
        raise ConfigError(prefix, f"expected a mapping (a topology preset), got {type(cfg).__name__}")
    unknown = set(cfg) - _KEYS
    if unknown:
        raise ConfigError(prefix, f"unknown keys {sorted(unknown)}; allowed: {sorted(_KEYS)}")
    name = cfg.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{prefix}.name", f"expected a non-empty string, got {name!r}")
    nodes = _int(cfg, "num_nodes", prefix)
    per_node = _int(cfg, "gpus_per_node", prefix)
    ep = cfg.get("ep_ranks")
    ep = nodes * per_node if ep is None else _int(cfg, "ep_ranks", prefix)
    if ep % nodes:
        raise ConfigError(f"{prefix}.ep_ranks", f"{ep} EP ranks do not spread evenly over {nodes} nodes")
    if per_node % (ep // nodes):
        raise ConfigError(
            f"{prefix}.ep_ranks",
            f"{ep // nodes} EP ranks per node do not divide {per_node} GPUs per node "
            "(each EP rank must be a whole tensor-parallel group)",
        )
    intra = _pos(cfg, "intra_node_gbps", prefix)
    inter = _pos(cfg, "inter_node_gbps", prefix, required=nodes > 1)
    if inter is None:
        inter = intra
    matrix = cfg.get("bandwidth_matrix")
    if matrix is not None:
        try:
            matrix = np.array(matrix, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{prefix}.bandwidth_matrix", f"expected a numeric matrix ({exc})") from exc
        if matrix.shape != (ep, ep):
            raise ConfigError(
                f"{prefix}.bandwidth_matrix",
                f"expected shape [{ep}, {ep}] (ep_ranks), got {list(matrix.shape)}",
            )
        off = ~np.eye(ep, dtype=bool)
        if not (np.isfinite(matrix[off]).all() and (matrix[off] > 0).all()):
            raise ConfigError(
                f"{prefix}.bandwidth_matrix", "off-diagonal entries must be positive finite GB/s"
            )
        matrix.setflags(write=False)
    nic = _pos(cfg, "nic_gbps", prefix, required=False)
    hidden = _int(cfg, "hidden_size", prefix)
    dtype_bytes = _pos(cfg, "dtype_bytes", prefix)
    tp = per_node // (ep // nodes)
    tpt = _time_per_token(cfg.get("compute"), tp, prefix)
    return Topology(
        name=name,
        num_nodes=nodes,
        gpus_per_node=per_node,
        ep_ranks=ep,
        intra_node_gbps=float(intra),  # type: ignore[arg-type]
        inter_node_gbps=float(inter),
        bytes_per_token=float(hidden * dtype_bytes),  # type: ignore[operator]
        time_per_token_s=tpt,
        bandwidth_matrix=matrix,
        nic_gbps=nic,
    )
