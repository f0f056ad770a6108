"""The cluster that a placement runs on: EP ranks, nodes, links, token size and expert compute.

Vocabulary. A *GPU* in the placement and cost-model code is an expert-parallel (EP) rank, the ``G`` of a
``Placement``. With tensor parallelism an EP rank is a group of ``tp_size`` physical GPUs in one node (the
paper's single-node setting: 8 H100 as 4 EP x 2 TP). EP ranks are laid out node by node: rank ``g`` lives on
node ``g // ranks_per_node``.

Communication (``link_model``):

- ``shared`` (default, what the hardware has): every ordered pair of EP ranks ``(a, b)`` may carry at most
  ``bandwidth_gbps()[a, b]`` GB/s; on top of that, all of a rank's intra-node traffic shares its switch ports
  (``gpu_port_gbps`` per physical GPU and direction, ``tp_size`` of them per rank: NVSwitch gives each GPU one
  injection and one ejection budget for all its peers), and all of its cross-node traffic shares its network
  interface (``nic_gbps`` per direction). A transfer ends when the slowest of its link, its sender's budget
  and its receiver's budget ends.
- ``pairwise`` (the MoETuner paper's ``B`` matrix): every ordered pair is a private link at full bandwidth,
  all in parallel; ``gpu_port_gbps`` and ``nic_gbps`` are ignored.

Compute: processing one token copy by one expert on one EP rank takes ``time_per_token_s`` seconds, either
measured and given, or ``expert_flops_per_token / (tp_size * gpu_tflops * 1e12 * efficiency)``.

Presets live in ``conf/topology/*.yaml`` (``_target_: moe.topology.Topology``), built with
``common.config.build(cfg.topology, "topology")``; ``topology_from_config`` does the same for a plain dict.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from common.config import schema
from common.errors import ConfigError

GB = 1e9  # bytes per GB: bandwidths are in decimal GB/s, as vendors quote them
LINK_MODELS = ("shared", "pairwise")


def _positive(key: str, v: Any, allow_none: bool) -> None:
    if v is None and allow_none:
        return
    if isinstance(v, bool) or not isinstance(v, int | float | np.number) or not np.isfinite(v) or v <= 0:
        raise ConfigError(
            key, f"expected a positive finite number{' or null' if allow_none else ''}, got {v!r}"
        )


def _integer(key: str, v: Any, minimum: int = 1) -> None:
    if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < minimum:
        raise ConfigError(key, f"expected an integer >= {minimum}, got {v!r}")


@dataclass
class Compute:  # not frozen: a nested config node must stay writable
    """Expert compute of one EP rank.

    Attributes:
        time_per_token_s: measured seconds for one expert of one EP rank to process one token copy; when set
            it wins over the FLOP model.
        expert_flops_per_token: FLOPs of one expert on one token (SwiGLU: 3 matmuls x 2 x hidden x ffn).
        gpu_tflops: dense bf16 peak of one physical GPU, TFLOP/s.
        efficiency: sustained fraction of the peak, in (0, 1].
    """

    time_per_token_s: float | None = None
    expert_flops_per_token: float | None = 352321536.0  # Mixtral-8x7B expert: 6 x 4096 x 14336
    gpu_tflops: float | None = 989.0  # H100 / H200 SXM dense bf16 (datasheet)
    efficiency: float | None = 0.5  # assumed, not measured

    def __post_init__(self) -> None:
        for name in ("time_per_token_s", "expert_flops_per_token", "gpu_tflops", "efficiency"):
            _positive(f"compute.{name}", getattr(self, name), allow_none=True)
        if self.time_per_token_s is None and None in (
            self.expert_flops_per_token,
            self.gpu_tflops,
            self.efficiency,
        ):
            raise ConfigError(
                "compute",
                "give either time_per_token_s (measured seconds per token per expert) or all of "
                "expert_flops_per_token, gpu_tflops and efficiency",
            )
        if self.efficiency is not None and self.efficiency > 1:
            raise ConfigError("compute.efficiency", f"expected a fraction in (0, 1], got {self.efficiency}")

    def seconds_per_token(self, tp_size: int) -> float:
        """Seconds per token copy per expert on an EP rank of ``tp_size`` GPUs."""
        if self.time_per_token_s is not None:
            return float(self.time_per_token_s)
        denom = tp_size * float(self.gpu_tflops) * 1e12 * float(self.efficiency)  # type: ignore[arg-type]
        return float(self.expert_flops_per_token) / denom  # type: ignore[arg-type]


@schema("topology", "cluster")
@dataclass(frozen=True, eq=False)
class Topology:
    """A cluster of ``ep_ranks`` EP ranks over ``num_nodes`` nodes (one option of config group ``topology``).

    Attributes:
        name: preset name (``paper_single_node``, ...).
        num_nodes: nodes.
        gpus_per_node: physical GPUs per node.
        ep_ranks: EP size, the placement's ``G``; a multiple of ``num_nodes`` whose ranks per node divide
            ``gpus_per_node``; null = every GPU is a rank.
        intra_node_gbps: GB/s one direction of the path between two ranks of one node.
        inter_node_gbps: GB/s one direction between two ranks of different nodes; null = ``intra_node_gbps``
            (only allowed with one node).
        gpu_port_gbps: GB/s per direction of one physical GPU's port into the node's switch, shared by all
            its intra-node peers (``link_model=shared``); an EP rank has ``tp_size`` of them; null: no limit.
        nic_gbps: GB/s per direction of a rank's network interface, shared by all its cross-node traffic
            (``link_model=shared``); null: no limit.
        link_model: ``shared`` or ``pairwise`` (see the module docstring).
        bandwidth_matrix: optional ``[G][G]`` GB/s that replaces the intra/inter rule (diagonal ignored).
        hidden_size, dtype_bytes: one token on the wire is ``hidden_size * dtype_bytes`` bytes.
        compute: expert compute (``Compute``).
        compute_file: a YAML file with ``compute: {time_per_token_s: ...}`` (what ``runners.serve
            mode=calibrate`` writes, measured on a GPU); when set, it replaces ``compute``.
    """

    name: str = "custom"
    num_nodes: int = 1
    gpus_per_node: int = 8
    ep_ranks: int | None = None
    intra_node_gbps: float = 450.0
    inter_node_gbps: float | None = None
    gpu_port_gbps: float | None = None
    nic_gbps: float | None = None
    link_model: str = "shared"
    bandwidth_matrix: list[list[float]] | None = None
    hidden_size: int = 4096
    dtype_bytes: float = 2.0
    compute: Compute = field(default_factory=Compute)
    compute_file: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.compute, Mapping):
            object.__setattr__(self, "compute", _compute_from(self.compute))
        if self.compute_file:
            object.__setattr__(self, "compute", compute_from_file(self.compute_file))
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError("name", f"expected a non-empty string, got {self.name!r}")
        _integer("num_nodes", self.num_nodes)
        _integer("gpus_per_node", self.gpus_per_node)
        if self.ep_ranks is None:
            object.__setattr__(self, "ep_ranks", self.num_nodes * self.gpus_per_node)
        _integer("ep_ranks", self.ep_ranks)
        if self.ep_ranks % self.num_nodes:
            raise ConfigError(
                "ep_ranks", f"{self.ep_ranks} EP ranks do not spread evenly over {self.num_nodes} nodes"
            )
        if self.gpus_per_node % (self.ep_ranks // self.num_nodes):
            raise ConfigError(
                "ep_ranks",
                f"{self.ep_ranks // self.num_nodes} EP ranks per node do not divide {self.gpus_per_node} GPUs "
                "per node (each EP rank must be a whole tensor-parallel group)",
            )
        _positive("intra_node_gbps", self.intra_node_gbps, allow_none=False)
        if self.inter_node_gbps is None and self.num_nodes > 1:
            raise ConfigError(
                "inter_node_gbps", "required with more than one node; expected a positive number"
            )
        for key in ("inter_node_gbps", "gpu_port_gbps", "nic_gbps", "dtype_bytes"):
            _positive(key, getattr(self, key), allow_none=key != "dtype_bytes")
        _integer("hidden_size", self.hidden_size)
        if self.link_model not in LINK_MODELS:
            raise ConfigError("link_model", f"expected one of {list(LINK_MODELS)}, got {self.link_model!r}")
        if self.bandwidth_matrix is not None:
            object.__setattr__(self, "bandwidth_matrix", self._checked_matrix())

    def _checked_matrix(self) -> np.ndarray:
        g = int(self.ep_ranks)  # type: ignore[arg-type]
        try:
            matrix = np.array(self.bandwidth_matrix, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ConfigError("bandwidth_matrix", f"expected a numeric matrix ({exc})") from exc
        if matrix.shape != (g, g):
            raise ConfigError(
                "bandwidth_matrix", f"expected shape [{g}, {g}] (ep_ranks), got {list(matrix.shape)}"
            )
        off = ~np.eye(g, dtype=bool)
        if not (np.isfinite(matrix[off]).all() and (matrix[off] > 0).all()):
            raise ConfigError("bandwidth_matrix", "off-diagonal entries must be positive finite GB/s")
        matrix.setflags(write=False)
        return matrix

    # ------------------------------------------------------------------ shape
    @property
    def num_gpus(self) -> int:
        """G: EP ranks (the placement's GPUs)."""
        return int(self.ep_ranks)  # type: ignore[arg-type]

    @property
    def ranks_per_node(self) -> int:
        """EP ranks in one node (what the placement algorithms call ``gpus_per_node``)."""
        return self.num_gpus // self.num_nodes

    @property
    def tp_size(self) -> int:
        """Physical GPUs per EP rank."""
        return self.gpus_per_node // self.ranks_per_node

    @property
    def bytes_per_token(self) -> float:
        """Bytes of one token's hidden state on the wire."""
        return float(self.hidden_size * self.dtype_bytes)

    @property
    def time_per_token_s(self) -> float:
        """Seconds for one expert of one EP rank to process one token copy."""
        return self.compute.seconds_per_token(self.tp_size)

    def node_of(self) -> np.ndarray:
        """int64 ``[G]``: the node of each EP rank."""
        return np.arange(self.num_gpus, dtype=np.int64) // self.ranks_per_node

    def cross_node(self) -> np.ndarray:
        """bool ``[G, G]``: True where the two ranks are on different nodes."""
        n = self.node_of()
        return n[:, None] != n[None, :]

    # ------------------------------------------------------------------ links
    def bandwidth_gbps(self) -> np.ndarray:
        """float64 ``[G, G]``: GB/s of the path from rank a to rank b; the diagonal is 0 (no link: local)."""
        if self.bandwidth_matrix is not None:
            bw = np.array(self.bandwidth_matrix, dtype=np.float64)
        else:
            inter = self.intra_node_gbps if self.inter_node_gbps is None else self.inter_node_gbps
            bw = np.where(self.cross_node(), inter, self.intra_node_gbps).astype(np.float64)
        np.fill_diagonal(bw, 0.0)
        return bw

    def bandwidth_bytes_per_s(self) -> np.ndarray:
        """float64 ``[G, G]``: bytes/s of every path (0 on the diagonal)."""
        return self.bandwidth_gbps() * GB

    def inverse_bandwidth_s_per_byte(self) -> np.ndarray:
        """float64 ``[G, G]``: seconds per byte of every path; 0 on the diagonal (local transfers are free)."""
        bw = self.bandwidth_bytes_per_s()
        off = ~np.eye(self.num_gpus, dtype=bool)
        return np.where(off, 1.0 / np.where(off, bw, 1.0), 0.0)

    def rank_intra_bytes_per_s(self) -> float | None:
        """Bytes/s per direction that all of a rank's intra-node traffic shares; ``None``: not limited."""
        if self.link_model != "shared" or self.gpu_port_gbps is None:
            return None
        return float(self.gpu_port_gbps) * self.tp_size * GB

    def rank_nic_bytes_per_s(self) -> float | None:
        """Bytes/s per direction that all of a rank's cross-node traffic shares; ``None``: not limited."""
        if self.link_model != "shared" or self.nic_gbps is None:
            return None
        return float(self.nic_gbps) * GB

    def send_capacity_bytes_per_s(self) -> np.ndarray:
        """float64 ``[G]``: the most bytes/s each rank can send to all others at once (links and budgets)."""
        bw = self.bandwidth_bytes_per_s()
        cross = self.cross_node()
        intra = np.where(~cross, bw, 0.0).sum(axis=1)
        inter = np.where(cross, bw, 0.0).sum(axis=1)
        cap_intra, cap_nic = self.rank_intra_bytes_per_s(), self.rank_nic_bytes_per_s()
        if cap_intra is not None:
            intra = np.minimum(intra, cap_intra)
        if cap_nic is not None:
            inter = np.minimum(inter, cap_nic)
        return intra + inter

    def with_model(self, hidden_size: int | None, expert_flops_per_token: float | None) -> Topology:
        """This topology with a traced model's token size and expert FLOPs (``None`` keeps the current one).

        A measured ``compute.time_per_token_s`` still wins over FLOPs.
        """
        out = self
        if hidden_size is not None:
            out = dataclasses.replace(out, hidden_size=int(hidden_size))
        if expert_flops_per_token is not None:
            comp = dataclasses.replace(out.compute, expert_flops_per_token=float(expert_flops_per_token))
            out = dataclasses.replace(out, compute=comp)
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (for run records and logs)."""
        return {
            "name": self.name,
            "num_nodes": self.num_nodes,
            "gpus_per_node": self.gpus_per_node,
            "ep_ranks": self.num_gpus,
            "tp_size": self.tp_size,
            "intra_node_gbps": self.intra_node_gbps,
            "inter_node_gbps": self.inter_node_gbps,
            "gpu_port_gbps": self.gpu_port_gbps,
            "nic_gbps": self.nic_gbps,
            "link_model": self.link_model,
            "bytes_per_token": self.bytes_per_token,
            "time_per_token_s": self.time_per_token_s,
            "custom_bandwidth_matrix": self.bandwidth_matrix is not None,
        }


_FIELDS = {f.name for f in dataclasses.fields(Topology)}
_COMPUTE_FIELDS = {f.name for f in dataclasses.fields(Compute)}


def compute_from_file(path: str) -> Compute:
    """The measured compute term in a calibration file (YAML ``compute: {time_per_token_s: s}``)."""
    p = Path(str(path)).expanduser()
    if not p.is_file():
        raise ConfigError("compute_file", f"file not found: {path}")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError("compute_file", f"{path}: not readable YAML ({exc})") from None
    compute = raw.get("compute") if isinstance(raw, dict) else None
    if not isinstance(compute, dict) or not compute.get("time_per_token_s"):
        raise ConfigError("compute_file", f"{path}: expected a 'compute' mapping with time_per_token_s")
    return Compute(time_per_token_s=float(compute["time_per_token_s"]))


def _compute_from(cfg: Any) -> Compute:
    if not isinstance(cfg, Mapping):
        raise ConfigError("compute", f"expected a mapping with {sorted(_COMPUTE_FIELDS)}, got {cfg!r}")
    unknown = set(cfg) - _COMPUTE_FIELDS
    if unknown:
        raise ConfigError("compute", f"unknown keys {sorted(unknown)}; allowed: {sorted(_COMPUTE_FIELDS)}")
    return Compute(**dict(cfg))


def topology_from_config(cfg: Mapping[str, Any], prefix: str = "topology") -> Topology:
    """A ``Topology`` from a plain ``topology`` config node (``_target_`` optional), checking every field.

    Raises:
        ConfigError: naming ``topology.<key>`` and the expected form.
    """
    if not isinstance(cfg, Mapping):
        raise ConfigError(prefix, f"expected a mapping (a topology preset), got {type(cfg).__name__}")
    plain = {k: v for k, v in cfg.items() if k not in ("_target_", "defaults")}
    unknown = set(plain) - _FIELDS
    if unknown:
        raise ConfigError(prefix, f"unknown keys {sorted(unknown)}; allowed: {sorted(_FIELDS)}")
    try:
        return Topology(**plain)
    except ConfigError as exc:
        raise ConfigError(f"{prefix}.{exc.key}", exc.detail) from None
