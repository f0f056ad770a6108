"""Replay an evaluation trace through a placement on a topology: loads, all-to-all traffic and times.

The rules (documented with examples in ``docs/cost_model.md``):

- Top-k: every chosen expert receives one token copy (gate weights do not change counts); a GPU's load is
  the token copies it processes. Compute time of a GPU = load x ``topology.time_per_token_s``.
- Token position: before layer 0 a batch's tokens are laid out by ``first_layer_start`` (``uniform``: the
  batch in ``G`` contiguous equal blocks, data-parallel order; ``round_robin``: token i on GPU ``i % G``).
  After layer l, ``token_movement`` decides where a token is: ``follow`` (default, MoETuner's premise) on
  the GPU of its top-1 expert when the trace's ``slot_order`` is ``score``, and on the GPU that processed most
  of its copies when it is ``unordered`` (ties broken by a per-token hash, never by GPU or expert id), so no
  rule depends on an accident of slot order; ``home``: back on the GPU it started on (Megatron-style combine).
- Replicas (``replica_choice``): ``even`` (default) spreads an expert's tokens evenly over all its replicas
  (token t takes candidate ``t % n``), the split that EPLB-style balancers plan for and that serving engines
  make; ``local``: a token on GPU s picks the replica on s if there is one, else the replicas on s's node,
  else all replicas (``t % n`` among those), which saves traffic but can undo the balance.
- Dispatch (before the experts): token t is sent from its position to every GPU holding one of its experts;
  with ``dedupe_dispatch`` once per destination GPU (engines dedupe), else once per copy. Sending to itself
  is local (counted on the diagonal, never timed). Combine (after the experts): each GPU that processed some
  of t's copies sends one partial result (or one per copy without dedupe) to t's next position.
- Links (``Fabric``): a transfer takes bytes / the bandwidth of its GPU pair; with ``link_model=shared`` it
  also waits for its sender's and receiver's shared budgets (all of that rank's intra-node bytes over its
  switch ports, or all its cross-node bytes over its NIC). A phase ends when the slowest of links, senders
  and receivers ends (the communication tail). ``link_model=pairwise`` keeps only the pair links.
- Per batch of N tokens and per layer: token-processing tail = the slowest GPU's compute time; mean = the mean
  over tokens of the compute finish time of the slowest GPU holding one of its experts. All-to-all tail =
  dispatch tail + combine tail; mean = the mean over tokens of (its slowest dispatch link + its slowest
  combine link; 0 when local). MoE-layer time = dispatch tail + compute tail + combine tail (tail), or the
  token-mean of the three (mean). Over layers the per-layer times are summed (one forward pass through all
  MoE layers); over batches they are averaged, and percentiles are taken over batches.

Everything is vectorised over tokens (``bincount`` and gathers); the only Python loop is over layers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from common.config import rekey, schema
from common.errors import ConfigError, InputError
from common.progress import track
from moe.placement.base import Placement
from moe.topology import Topology

FIRST_LAYER_STARTS = ("uniform", "round_robin")
TOKEN_MOVEMENTS = ("follow", "home")
REPLICA_CHOICES = ("even", "local")
SLOT_ORDERS = ("score", "unordered")


# ---------------------------------------------------------------------- options
@schema("eval", "default")
@dataclass(frozen=True)
class EvalOptions:
    """How the trace is replayed (config group ``eval``); see the module docstring.

    Attributes:
        batch_tokens: tokens per simulated batch (iteration); ``None``: the whole trace is one batch. Tokens
            beyond the last full batch are not evaluated (``CostReport.num_tokens`` says how many were).
        first_layer_start: ``uniform`` or ``round_robin``.
        token_movement: ``follow`` or ``home``.
        dedupe_dispatch: send a token once per destination GPU (True) or once per expert copy (False).
        percentiles: percentiles over batches to report for the tail times (each in [0, 100]).
        replica_choice: ``even`` or ``local`` (how a token picks among an expert's replicas).
    """

    batch_tokens: int | None = 8192
    first_layer_start: str = "uniform"
    token_movement: str = "follow"
    dedupe_dispatch: bool = True
    percentiles: tuple[float, ...] = (50.0, 90.0, 99.0)
    replica_choice: str = "even"

    def __post_init__(self) -> None:
        bt = self.batch_tokens
        if bt is not None and (isinstance(bt, bool) or not isinstance(bt, int | np.integer) or bt < 1):
            raise ConfigError("batch_tokens", f"expected a positive integer or null, got {bt!r}")
        for key, allowed in (
            ("first_layer_start", FIRST_LAYER_STARTS),
            ("replica_choice", REPLICA_CHOICES),
            ("token_movement", TOKEN_MOVEMENTS),
        ):
            if getattr(self, key) not in allowed:
                raise ConfigError(key, f"expected one of {list(allowed)}, got {getattr(self, key)!r}")
        if not isinstance(self.dedupe_dispatch, bool):
            raise ConfigError("dedupe_dispatch", f"expected true or false, got {self.dedupe_dispatch!r}")
        ps = self.percentiles
        if not isinstance(ps, Sequence) or isinstance(ps, str):
            raise ConfigError("percentiles", f"expected a list of numbers, got {ps!r}")
        object.__setattr__(self, "percentiles", tuple(ps))
        for p in self.percentiles:
            if isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p <= 100:
                raise ConfigError("percentiles", f"expected numbers in [0, 100], got {list(ps)}")


_EVAL_KEYS = {f.name for f in fields(EvalOptions)}


def eval_options_from_config(cfg: Mapping[str, Any] | None) -> EvalOptions:
    """``EvalOptions`` from a plain ``eval`` config node (``_target_`` optional; missing keys: defaults)."""
    if cfg is None:
        return EvalOptions()
    if not isinstance(cfg, Mapping):
        raise ConfigError("eval", f"expected a mapping, got {type(cfg).__name__}")
    kwargs = {k: v for k, v in cfg.items() if k not in ("_target_", "defaults")}
    unknown = set(kwargs) - _EVAL_KEYS
    if unknown:
        raise ConfigError("eval", f"unknown keys {sorted(unknown)}; allowed: {sorted(_EVAL_KEYS)}")
    try:
        return EvalOptions(**kwargs)
    except ConfigError as exc:
        raise rekey(exc, "eval") from None


# ---------------------------------------------------------------------- replicas
@dataclass(frozen=True)
class RouteTable:
    """Where a token on GPU s sends its copy for expert e in layer l.

    Attributes:
        choice: int64 ``[L, G, E, M]``: candidate GPUs (``M`` = most replicas of any expert; unused = -1).
        count: int64 ``[L, G, E]``: number of candidates; the token with index t takes ``choice[..., t % count]``.
    """

    choice: np.ndarray
    count: np.ndarray


def route_table(placement: Placement, node_of: np.ndarray, rule: str = "local") -> RouteTable:
    """The replica-choice table of ``placement``.

    Args:
        placement: ``L`` layers, ``G`` GPUs, ``E`` experts.
        node_of: int ``[G]``, the node of each GPU.
        rule: ``local`` (own GPU, else own node, else all replicas) or ``even`` (all replicas, whatever the
            token's GPU).
    """
    if rule not in REPLICA_CHOICES:
        raise ConfigError("eval.replica_choice", f"expected one of {list(REPLICA_CHOICES)}, got {rule!r}")
    holders = placement.expert_share() > 0  # [L, G, E]
    num_layers, g, e = holders.shape
    if not placement.has_replicas:
        gpu_of = placement.expert_to_gpu()  # [L, E]
        choice = np.broadcast_to(gpu_of[:, None, :, None], (num_layers, g, e, 1)).copy()
        return RouteTable(choice=choice, count=np.ones((num_layers, g, e), dtype=np.int64))
    node_of = np.asarray(node_of, dtype=np.int64)
    m = int(holders.sum(axis=1).max())
    choice = np.full((num_layers, g, e, m), -1, dtype=np.int64)
    count = np.zeros((num_layers, g, e), dtype=np.int64)
    for li in range(num_layers):
        for ei in range(e):
            h = np.flatnonzero(holders[li, :, ei])
            if rule == "even":  # the same candidates whatever the token's GPU
                choice[li, :, ei, : h.size] = h
                count[li, :, ei] = h.size
                continue
            for s in range(g):
                if holders[li, s, ei]:
                    cand = np.array([s])
                else:
                    on_node = h[node_of[h] == node_of[s]]
                    cand = on_node if on_node.size else h
                choice[li, s, ei, : cand.size] = cand
                count[li, s, ei] = cand.size
    return RouteTable(choice=choice, count=count)


# ---------------------------------------------------------------------- result
@dataclass
class CostReport:
    """The cost model's output. ``L`` layers, ``G`` GPUs, ``B`` batches of ``batch_tokens`` tokens.

    Whole evaluation set (all batches summed), per layer:
        tokens_per_gpu: int64 ``[L, G]`` token copies each GPU processes.
        balancedness: float ``[L]`` mean / max of ``tokens_per_gpu`` (1.0 = perfect).
        dispatch: int64 ``[L, G, G]`` token transfers from GPU a (row) to GPU b (column); diagonal = local.
        combine: int64 ``[L, G, G]`` partial results sent from expert GPU a to the token's next GPU b.
        link_bytes: float ``[L, G, G]`` bytes on each link, dispatch + combine (diagonal 0).
        link_time_s: float ``[L, G, G]`` seconds each link is busy, dispatch + combine.
        compute_time_s: float ``[L, G]`` seconds of expert compute per GPU.
        cross_node: bool ``[G, G]`` pairs in different nodes.

    Per batch x layer (seconds unless named otherwise), ``[B, L]``:
        batch_balancedness, batch_token_tail_s, batch_token_mean_s, batch_dispatch_tail_s,
        batch_combine_tail_s, batch_a2a_mean_s, batch_layer_mean_s.
    """

    num_tokens: int
    batch_tokens: int
    options: EvalOptions
    tokens_per_gpu: np.ndarray
    balancedness: np.ndarray
    dispatch: np.ndarray
    combine: np.ndarray
    link_bytes: np.ndarray
    link_time_s: np.ndarray
    compute_time_s: np.ndarray
    cross_node: np.ndarray
    batch_balancedness: np.ndarray
    batch_token_tail_s: np.ndarray
    batch_token_mean_s: np.ndarray
    batch_dispatch_tail_s: np.ndarray
    batch_combine_tail_s: np.ndarray
    batch_a2a_mean_s: np.ndarray
    batch_layer_mean_s: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ derived
    @property
    def num_layers_evaluated(self) -> int:
        return int(self.tokens_per_gpu.shape[0])

    @property
    def num_batches(self) -> int:
        return int(self.batch_token_tail_s.shape[0])

    @property
    def batch_a2a_tail_s(self) -> np.ndarray:
        """``[B, L]`` all-to-all tail: slowest dispatch link + slowest combine link."""
        return self.batch_dispatch_tail_s + self.batch_combine_tail_s

    @property
    def batch_layer_tail_s(self) -> np.ndarray:
        """``[B, L]`` MoE-layer time: dispatch tail + compute tail + combine tail."""
        return self.batch_dispatch_tail_s + self.batch_token_tail_s + self.batch_combine_tail_s

    def _off_diagonal(self, m: np.ndarray) -> np.ndarray:
        """``[L]`` sum of the off-diagonal part of ``m [L, G, G]``."""
        return m.sum(axis=(1, 2)) - np.trace(m, axis1=1, axis2=2)

    def cross_gpu_tokens(self) -> np.ndarray:
        """float ``[L]`` token transfers between different GPUs, dispatch + combine."""
        return (self._off_diagonal(self.dispatch) + self._off_diagonal(self.combine)).astype(np.float64)

    def cross_node_tokens(self) -> np.ndarray:
        """float ``[L]`` token transfers that leave a node, dispatch + combine."""
        return ((self.dispatch + self.combine) * self.cross_node).sum(axis=(1, 2)).astype(np.float64)

    def summary(self) -> dict[str, float]:
        """Flat metrics: layer-summed per batch, then the mean (and percentiles) over batches.

        Names: see ``docs/cost_model.md``; times in seconds, volumes in token transfers or bytes.
        """
        disp_cross = float(self._off_diagonal(self.dispatch).sum())
        disp_all = float(self.dispatch.sum())
        cross_node = float(self.cross_node_tokens().sum())
        per_batch = {
            "token_time_tail_s": self.batch_token_tail_s.sum(axis=1),
            "token_time_mean_s": self.batch_token_mean_s.sum(axis=1),
            "a2a_time_tail_s": self.batch_a2a_tail_s.sum(axis=1),
            "a2a_time_mean_s": self.batch_a2a_mean_s.sum(axis=1),
            "dispatch_time_tail_s": self.batch_dispatch_tail_s.sum(axis=1),
            "combine_time_tail_s": self.batch_combine_tail_s.sum(axis=1),
            "layer_time_tail_s": self.batch_layer_tail_s.sum(axis=1),
            "layer_time_mean_s": self.batch_layer_mean_s.sum(axis=1),
        }
        out: dict[str, float] = {
            "tokens_evaluated": float(self.num_tokens),
            "num_batches": float(self.num_batches),
            "batch_tokens": float(self.batch_tokens),
            "balancedness_mean": float(self.balancedness.mean()),
            "balancedness_min": float(self.balancedness.min()),
            "batch_balancedness_mean": float(self.batch_balancedness.mean()),
            "cross_gpu_tokens": float(self.cross_gpu_tokens().sum()),
            "dispatch_cross_gpu_tokens": disp_cross,
            "combine_cross_gpu_tokens": float(self._off_diagonal(self.combine).sum()),
            "cross_gpu_fraction": disp_cross / disp_all if disp_all else 0.0,
            "cross_node_tokens": cross_node,
            "cross_node_bytes": float((self.link_bytes * self.cross_node).sum()),
            "link_bytes_tail": float(self.link_bytes.max(axis=(1, 2)).sum()),
            "link_time_tail_s": float(self.link_time_s.max(axis=(1, 2)).sum()),
            "compute_time_tail_s": float(self.compute_time_s.max(axis=1).sum()),
        }
        for name, values in per_batch.items():
            out[name] = float(values.mean())
        for name in ("token_time_tail_s", "a2a_time_tail_s", "layer_time_tail_s"):
            stem = name[: -len("_s")]
            for p in self.options.percentiles:
                out[f"{stem}_p{_pct_name(p)}_s"] = float(np.percentile(per_batch[name], p))
        return out

    def layer_series(self) -> dict[str, list[float]]:
        """Per-layer lists (length ``L``); times are means over batches."""
        return {
            "balancedness": self.balancedness.tolist(),
            "cross_gpu_tokens": self.cross_gpu_tokens().tolist(),
            "cross_node_tokens": self.cross_node_tokens().tolist(),
            "token_time_tail_s": self.batch_token_tail_s.mean(axis=0).tolist(),
            "token_time_mean_s": self.batch_token_mean_s.mean(axis=0).tolist(),
            "a2a_time_tail_s": self.batch_a2a_tail_s.mean(axis=0).tolist(),
            "a2a_time_mean_s": self.batch_a2a_mean_s.mean(axis=0).tolist(),
            "layer_time_tail_s": self.batch_layer_tail_s.mean(axis=0).tolist(),
        }

    def arrays(self) -> dict[str, np.ndarray]:
        """Every array, for an ``.npz`` artifact."""
        return {
            "tokens_per_gpu": self.tokens_per_gpu,
            "balancedness": self.balancedness,
            "dispatch": self.dispatch,
            "combine": self.combine,
            "link_bytes": self.link_bytes,
            "link_time_s": self.link_time_s,
            "compute_time_s": self.compute_time_s,
            "batch_balancedness": self.batch_balancedness,
            "batch_token_tail_s": self.batch_token_tail_s,
            "batch_token_mean_s": self.batch_token_mean_s,
            "batch_dispatch_tail_s": self.batch_dispatch_tail_s,
            "batch_combine_tail_s": self.batch_combine_tail_s,
            "batch_a2a_mean_s": self.batch_a2a_mean_s,
            "batch_layer_mean_s": self.batch_layer_mean_s,
        }


def _pct_name(p: float) -> str:
    """``50 -> '50'``, ``99.9 -> '99_9'``."""
    return f"{p:g}".replace(".", "_")


# ---------------------------------------------------------------------- the model
def _check_inputs(experts: np.ndarray, placement: Placement, topology: Topology, slot_order: str) -> None:
    if slot_order not in SLOT_ORDERS:
        raise InputError(f"cost model: slot_order must be one of {list(SLOT_ORDERS)}, got {slot_order!r}")
    if experts.ndim != 3:
        raise InputError(f"cost model: experts must be [tokens, layers, top_k], got shape {experts.shape}")
    if not np.issubdtype(experts.dtype, np.integer):
        raise InputError(f"cost model: experts must be integer expert ids, got dtype {experts.dtype}")
    t, num_layers, k = experts.shape
    if t == 0 or k == 0:
        raise InputError(f"cost model: the evaluation trace is empty (shape {experts.shape})")
    if num_layers != placement.num_layers:
        raise InputError(
            f"cost model: the trace has {num_layers} layers, placement '{placement.name}' {placement.num_layers}"
        )
    if placement.num_gpus != topology.num_gpus:
        raise InputError(
            f"cost model: placement '{placement.name}' uses {placement.num_gpus} GPUs, topology "
            f"'{topology.name}' has {topology.num_gpus} EP ranks"
        )
    lo, hi = int(experts.min()), int(experts.max())
    if lo < 0 or hi >= placement.num_experts:
        raise InputError(
            f"cost model: expert ids span {lo}..{hi}, placement has experts 0..{placement.num_experts - 1}"
        )


@dataclass(frozen=True)
class Fabric:
    """What a phase's transfers cost on ``topology``: per-byte link times and the shared per-rank budgets.

    Attributes:
        inv_bw: float ``[G, G]`` seconds per byte of every path (0 on the diagonal).
        cross: bool ``[G, G]`` pairs on different nodes.
        intra: bool ``[G, G]`` distinct pairs on one node.
        bytes_per_token: bytes of one transfer.
        intra_bps, nic_bps: bytes/s per direction that a rank's intra-node (switch ports) and cross-node
            (NIC) traffic share; ``None``: not limited.
    """

    inv_bw: np.ndarray
    cross: np.ndarray
    intra: np.ndarray
    bytes_per_token: float
    intra_bps: float | None
    nic_bps: float | None

    @classmethod
    def of(cls, topology: Topology) -> Fabric:
        cross = topology.cross_node()
        return cls(
            inv_bw=topology.inverse_bandwidth_s_per_byte(),
            cross=cross,
            intra=~cross & ~np.eye(topology.num_gpus, dtype=bool),
            bytes_per_token=float(topology.bytes_per_token),
            intra_bps=topology.rank_intra_bytes_per_s(),
            nic_bps=topology.rank_nic_bytes_per_s(),
        )

    def transfer_times(self, m: np.ndarray) -> np.ndarray:
        """Seconds each transfer of one phase takes, ``[B, G, G]`` from token counts ``m [B, G, G]``.

        A transfer ends when the slowest of its path (bytes / bandwidth), its sender's budget and its
        receiver's budget (all that rank's intra-node, or cross-node, bytes / the budget) ends; the phase's
        tail, the max over transfers, is thus the slowest of links, senders and receivers. Diagonal = 0.
        """
        bpt = self.bytes_per_token
        t = m * (bpt * self.inv_bw)
        for mask, bps in ((self.intra, self.intra_bps), (self.cross, self.nic_bps)):
            if bps is None or not mask.any():
                continue
            xm = m * mask
            send = xm.sum(axis=2) * (bpt / bps)  # [B, G]
            recv = xm.sum(axis=1) * (bpt / bps)  # [B, G]
            t = np.where(xm > 0, np.maximum(t, np.maximum(send[:, :, None], recv[:, None, :])), t)
        return t


def _start_positions(pos_in_batch: np.ndarray, batch: int, num_gpus: int, rule: str) -> np.ndarray:
    """int64 GPU of every token before layer 0 (``pos_in_batch``: index of the token within its batch)."""
    if rule == "uniform":
        return pos_in_batch * num_gpus // batch
    return pos_in_batch % num_gpus


def token_hash(keys: np.ndarray) -> np.ndarray:
    """uint64 SplitMix64 of integer ``keys`` (any shape): a fixed pseudo-random tie-break."""
    z = keys.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def majority_gpu(dest: np.ndarray, tok: np.ndarray, num_gpus: int) -> np.ndarray:
    """int64 ``[T]``: per token, the GPU that processed most of its copies ``dest [k, T]``.

    Ties go to the tied GPU with the largest ``token_hash(token * G + gpu)``: the choice depends on neither
    the order of the slots nor on which GPU or expert has the smaller id.
    """
    k = dest.shape[0]
    same = np.zeros(dest.shape, dtype=np.uint64)
    for i in range(k):
        same += (dest == dest[i][None, :]).astype(np.uint64)
    salt = token_hash(tok[None, :] * num_gpus + dest) >> np.uint64(8)  # < 2**56: counts go above
    best = np.argmax((same << np.uint64(56)) | salt, axis=0)
    return dest[best, np.arange(dest.shape[1])]


def next_positions(
    dest: np.ndarray, src: np.ndarray, tok: np.ndarray, num_gpus: int, movement: str, slot_order: str
) -> np.ndarray:
    """Where every token is after a layer: ``home`` = ``src``; ``follow`` = its top-1 expert's GPU
    (``slot_order=score``: slot 0) or the GPU with most of its copies (``unordered``, ``majority_gpu``)."""
    if movement == "home":
        return src
    if slot_order == "score":
        return dest[0]
    return majority_gpu(dest, tok, num_gpus)


def _first_copies(dest: np.ndarray, dedupe: bool) -> np.ndarray:
    """bool ``[k, T]``: copy j is sent (dedupe: unless an earlier copy of the token went to the same GPU)."""
    first = np.ones(dest.shape, dtype=bool)
    if dedupe:
        for j in range(1, dest.shape[0]):
            for i in range(j):
                first[j] &= dest[j] != dest[i]
    return first


@dataclass
class _Replay:
    """The fixed inputs of one replay: ``n`` tokens per batch, ``nb`` batches, ``g`` GPUs."""

    routes: RouteTable
    fabric: Fabric
    options: EvalOptions
    slot_order: str
    time_per_token_s: float
    n: int
    nb: int
    g: int

    def destinations(self, li: int, ex: np.ndarray, src: np.ndarray, tok: np.ndarray) -> np.ndarray:
        """int64 ``[k, T]``: the GPU that processes each copy ``ex [k, T]`` of layer ``li``."""
        if self.routes.choice.shape[-1] > 1:
            cnt = self.routes.count[li][src, ex]
            return self.routes.choice[li][src, ex, tok % cnt]
        return self.routes.choice[li, 0, :, 0][ex]


def _replay_layer(rp: _Replay, li: int, ex: np.ndarray, src: np.ndarray, tok: np.ndarray) -> dict[str, Any]:
    """One layer of every batch: loads, transfer counts, tails and token means; ``nxt`` = new positions."""
    nb, g, n = rp.nb, rp.g, rp.n
    bg = (tok // n) * g
    dest = rp.destinations(li, ex, src, tok)
    load = np.bincount((bg + dest).ravel(), minlength=nb * g).reshape(nb, g)
    ct = load * rp.time_per_token_s  # [B, G]
    first = _first_copies(dest, rp.options.dedupe_dispatch)
    nxt = next_positions(dest, src, tok, g, rp.options.token_movement, rp.slot_order)
    kd = (bg + src) * g + dest  # key (batch, from, to)
    kc = (bg + dest) * g + nxt
    d_cnt = np.bincount(kd[first], minlength=nb * g * g).reshape(nb, g, g)
    c_cnt = np.bincount(kc[first], minlength=nb * g * g).reshape(nb, g, g)
    pt_d = rp.fabric.transfer_times(d_cnt)
    pt_c = rp.fabric.transfer_times(c_cnt)
    # per token: slowest of its links / GPUs (duplicates do not change a max)
    tok_disp = pt_d.reshape(-1)[kd].max(axis=0)
    tok_comp = ct.reshape(-1)[bg + dest].max(axis=0)
    tok_comb = pt_c.reshape(-1)[kc].max(axis=0)
    maxload = load.max(axis=1)
    return {
        "nxt": nxt,
        "load": load.sum(axis=0),
        "dispatch": d_cnt.sum(axis=0),
        "combine": c_cnt.sum(axis=0),
        "bal": np.where(maxload > 0, load.mean(axis=1) / np.maximum(maxload, 1), 1.0),
        "tok_tail": ct.max(axis=1),
        "tok_mean": tok_comp.reshape(nb, n).mean(axis=1),
        "disp_tail": pt_d.max(axis=(1, 2)),
        "comb_tail": pt_c.max(axis=(1, 2)),
        "a2a_mean": (tok_disp + tok_comb).reshape(nb, n).mean(axis=1),
        "layer_mean": (tok_disp + tok_comp + tok_comb).reshape(nb, n).mean(axis=1),
    }


_PER_BATCH = ("bal", "tok_tail", "tok_mean", "disp_tail", "comb_tail", "a2a_mean", "layer_mean")
_PER_LAYER = ("load", "dispatch", "combine")


def evaluate_placement(
    experts: np.ndarray,
    placement: Placement,
    topology: Topology,
    options: EvalOptions | None = None,
    progress: bool = False,
    slot_order: str = "unordered",
) -> CostReport:
    """Replay ``experts`` through ``placement`` on ``topology``.

    Args:
        experts: integer ``[tokens, layers, top_k]`` expert ids of the evaluation trace.
        placement: ``L`` layers on ``G = topology.num_gpus`` GPUs.
        topology: links, token size and compute model.
        options: replay rules (``EvalOptions()`` by default).
        progress: show per-layer progress (``common.progress.track``).
        slot_order: the trace's ``slot_order``: ``score`` (slot 0 is the top-1 expert) or ``unordered``
            (a set; the default, which gives no slot a meaning). Only ``token_movement=follow`` uses it.

    Returns:
        A ``CostReport``; tokens past the last full batch are left out.

    Raises:
        InputError: shapes or ids do not match the placement / topology, or an unknown ``slot_order``.
    """
    opts = options or EvalOptions()
    experts = np.asarray(experts)
    _check_inputs(experts, placement, topology, slot_order)
    t_all, num_layers, _ = experts.shape
    g = topology.num_gpus
    n = min(opts.batch_tokens or t_all, t_all)
    nb = t_all // n
    used = nb * n
    rp = _Replay(
        routes=route_table(placement, topology.node_of(), opts.replica_choice),
        fabric=Fabric.of(topology),
        options=opts,
        slot_order=slot_order,
        time_per_token_s=float(topology.time_per_token_s),
        n=n,
        nb=nb,
        g=g,
    )
    by_layer = np.ascontiguousarray(experts[:used].transpose(1, 2, 0))  # [L, k, T], input dtype
    tok = np.arange(used, dtype=np.int64)
    src = _start_positions(tok % n, n, g, opts.first_layer_start)
    per_batch = {name: np.zeros((nb, num_layers)) for name in _PER_BATCH}
    per_layer = {
        "load": np.zeros((num_layers, g), dtype=np.int64),
        "dispatch": np.zeros((num_layers, g, g), dtype=np.int64),
        "combine": np.zeros((num_layers, g, g), dtype=np.int64),
    }
    layers = range(num_layers)
    for li in track(layers, total=num_layers, description="cost model") if progress else layers:
        out = _replay_layer(rp, li, by_layer[li], src, tok)
        for name in _PER_BATCH:
            per_batch[name][:, li] = out[name]
        for name in _PER_LAYER:
            per_layer[name][li] = out[name]
        src = out["nxt"]
    info = {"placement": placement.name, "topology": topology.name, "tokens_dropped": t_all - used}
    return _report(used, n, opts, topology, per_layer, per_batch, info | {"slot_order": slot_order})


def _report(
    used: int,
    n: int,
    opts: EvalOptions,
    topology: Topology,
    per_layer: dict[str, np.ndarray],
    per_batch: dict[str, np.ndarray],
    info: dict[str, Any],
) -> CostReport:
    """Assemble the ``CostReport`` from the per-layer sums and the per-batch x layer arrays."""
    g = topology.num_gpus
    tokens_per_gpu, dispatch, combine = per_layer["load"], per_layer["dispatch"], per_layer["combine"]
    link_bytes = (dispatch + combine) * float(topology.bytes_per_token) * (~np.eye(g, dtype=bool))
    maxtok = tokens_per_gpu.max(axis=1)
    return CostReport(
        num_tokens=used,
        batch_tokens=n,
        options=opts,
        tokens_per_gpu=tokens_per_gpu,
        balancedness=np.where(maxtok > 0, tokens_per_gpu.mean(axis=1) / np.maximum(maxtok, 1), 1.0),
        dispatch=dispatch,
        combine=combine,
        link_bytes=link_bytes,
        link_time_s=link_bytes * topology.inverse_bandwidth_s_per_byte(),
        compute_time_s=tokens_per_gpu * float(topology.time_per_token_s),
        cross_node=topology.cross_node(),
        batch_balancedness=per_batch["bal"],
        batch_token_tail_s=per_batch["tok_tail"],
        batch_token_mean_s=per_batch["tok_mean"],
        batch_dispatch_tail_s=per_batch["disp_tail"],
        batch_combine_tail_s=per_batch["comb_tail"],
        batch_a2a_mean_s=per_batch["a2a_mean"],
        batch_layer_mean_s=per_batch["layer_mean"],
        info=info,
    )
