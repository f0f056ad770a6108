"""Replay an evaluation trace through a placement on a topology: loads, all-to-all traffic and times.

The rules (documented with examples in ``docs/cost_model.md``):

- Top-k: every chosen expert receives one token copy (gate weights do not change counts); a GPU's load is
  the token copies it processes. Compute time of a GPU = load x ``topology.time_per_token_s``.
- Token position: before layer 0 a batch's tokens are laid out by ``first_layer_start`` (``uniform``: the
  batch in ``G`` contiguous equal blocks, data-parallel order; ``round_robin``: token i on GPU ``i % G``).
  After layer l, ``token_movement`` decides where a token is: ``follow`` (default, MoETuner's premise) on the
  GPU that processed its top-1 expert (the first expert in the trace's router order); ``home``: back on the
  GPU it started on (Megatron-style combine to the source).
- Replicas (``replica_choice``): ``even`` (default) spreads an expert's tokens evenly over all its replicas
  (token t takes candidate ``t % n``), the split that EPLB-style balancers plan for and that serving engines
  make; ``local``: a token on GPU s picks the replica on s if there is one, else the replicas on s's node,
  else all replicas (``t % n`` among those), which saves traffic but can undo the balance.
- Dispatch (before the experts): token t is sent from its position to every GPU holding one of its experts;
  with ``dedupe_dispatch`` once per destination GPU (engines dedupe), else once per copy. Sending to itself
  is local (counted on the diagonal, never timed). Combine (after the experts): each GPU that processed some
  of t's copies sends one partial result (or one per copy without dedupe) to t's next position.
- Links: ordered pairs of GPUs, all in parallel; the time of a link in a phase = bytes / bandwidth; with a
  NIC model a cross-node transfer also waits for its ranks' NIC (egress of the sender, ingress of the
  receiver). A phase ends when its slowest link ends (the communication tail).
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
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common.errors import ConfigError, InputError
from common.progress import track
from moe.placement.base import Placement
from moe.topology import GB, Topology

FIRST_LAYER_STARTS = ("uniform", "round_robin")
TOKEN_MOVEMENTS = ("follow", "home")
REPLICA_CHOICES = ("even", "local")
_EVAL_KEYS = {
    "batch_tokens",
    "first_layer_start",
    "token_movement",
    "dedupe_dispatch",
    "percentiles",
    "replica_choice",
}


# ---------------------------------------------------------------------- options
@dataclass(frozen=True)
class EvalOptions:
    """How the trace is replayed; see the module docstring.

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
            raise ConfigError("eval.batch_tokens", f"expected a positive integer or null, got {bt!r}")
        if self.first_layer_start not in FIRST_LAYER_STARTS:
            raise ConfigError(
                "eval.first_layer_start",
                f"expected one of {list(FIRST_LAYER_STARTS)}, got {self.first_layer_start!r}",
            )
        if self.replica_choice not in REPLICA_CHOICES:
            raise ConfigError(
                "eval.replica_choice", f"expected one of {list(REPLICA_CHOICES)}, got {self.replica_choice!r}"
            )
        if self.token_movement not in TOKEN_MOVEMENTS:
            raise ConfigError(
                "eval.token_movement", f"expected one of {list(TOKEN_MOVEMENTS)}, got {self.token_movement!r}"
            )
        if not isinstance(self.dedupe_dispatch, bool):
            raise ConfigError("eval.dedupe_dispatch", f"expected true or false, got {self.dedupe_dispatch!r}")
        for p in self.percentiles:
            if isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p <= 100:
                raise ConfigError(
                    "eval.percentiles", f"expected numbers in [0, 100], got {list(self.percentiles)}"
                )


def eval_options_from_config(cfg: Mapping[str, Any] | None) -> EvalOptions:
    """``EvalOptions`` from an ``eval`` config node (plain dict; missing keys take the defaults)."""
    if cfg is None:
        return EvalOptions()
    if not isinstance(cfg, Mapping):
        raise ConfigError("eval", f"expected a mapping, got {type(cfg).__name__}")
    unknown = set(cfg) - _EVAL_KEYS
    if unknown:
        raise ConfigError("eval", f"unknown keys {sorted(unknown)}; allowed: {sorted(_EVAL_KEYS)}")
    kwargs = dict(cfg)
    if "percentiles" in kwargs:
        ps = kwargs["percentiles"]
        if not isinstance(ps, Sequence) or isinstance(ps, str):
            raise ConfigError("eval.percentiles", f"expected a list of numbers, got {ps!r}")
        kwargs["percentiles"] = tuple(ps)
    return EvalOptions(**kwargs)


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
            for s in range(g):
                if rule == "even":
                    cand = h
                elif holders[li, s, ei]:
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
def _check_inputs(experts: np.ndarray, placement: Placement, topology: Topology) -> None:
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


def _pair_times(
    m: np.ndarray, bytes_per_token: float, inv_bw: np.ndarray, cross: np.ndarray, nic_bps: float | None
) -> np.ndarray:
    """Seconds each transfer of one phase takes, ``[B, G, G]`` from token counts ``m [B, G, G]``.

    A link's time is its bytes / bandwidth; with a NIC model a cross-node pair also waits for the sender's
    egress and the receiver's ingress (all cross-node bytes of that rank / ``nic_bps``). Diagonal = 0.
    """
    t = m * (bytes_per_token * inv_bw)
    if nic_bps is None or not cross.any():
        return t
    xm = m * cross
    egress = xm.sum(axis=2) * (bytes_per_token / nic_bps)  # [B, G]
    ingress = xm.sum(axis=1) * (bytes_per_token / nic_bps)  # [B, G]
    nic = np.maximum(egress[:, :, None], ingress[:, None, :])
    return np.where((xm > 0), np.maximum(t, nic), t)


def _start_positions(pos_in_batch: np.ndarray, batch: int, num_gpus: int, rule: str) -> np.ndarray:
    """int64 GPU of every token before layer 0 (``pos_in_batch``: index of the token within its batch)."""
    if rule == "uniform":
        return pos_in_batch * num_gpus // batch
    return pos_in_batch % num_gpus


def evaluate_placement(
    experts: np.ndarray,
    placement: Placement,
    topology: Topology,
    options: EvalOptions | None = None,
    progress: bool = False,
) -> CostReport:
    """Replay ``experts`` through ``placement`` on ``topology``.

    Args:
        experts: integer ``[tokens, layers, top_k]`` expert ids of the evaluation trace, in router order.
        placement: ``L`` layers on ``G = topology.num_gpus`` GPUs.
        topology: links, token size and compute model.
        options: replay rules (``EvalOptions()`` by default).
        progress: show per-layer progress (``common.progress.track``).

    Returns:
        A ``CostReport``; tokens past the last full batch are left out.

    Raises:
        InputError: shapes or ids do not match the placement / topology.
    """
    opts = options or EvalOptions()
    experts = np.asarray(experts)
    _check_inputs(experts, placement, topology)
    t_all, num_layers, k = experts.shape
    g = topology.num_gpus
    n = min(opts.batch_tokens or t_all, t_all)
    nb = t_all // n
    used = nb * n
    routes = route_table(placement, topology.node_of(), opts.replica_choice)
    multi = routes.choice.shape[-1] > 1
    inv_bw = topology.inverse_bandwidth_s_per_byte()
    cross = topology.cross_node()
    bpt = float(topology.bytes_per_token)
    tpt = float(topology.time_per_token_s)
    nic_bps = topology.nic_gbps * GB if topology.nic_gbps is not None else None

    by_layer = np.ascontiguousarray(experts[:used].transpose(1, 2, 0))  # [L, k, T], input dtype
    tok = np.arange(used, dtype=np.int64)
    bid = tok // n
    src = _start_positions(tok % n, n, g, opts.first_layer_start)
    bg = bid * g  # [T]

    tokens_per_gpu = np.zeros((num_layers, g), dtype=np.int64)
    dispatch = np.zeros((num_layers, g, g), dtype=np.int64)
    combine = np.zeros((num_layers, g, g), dtype=np.int64)
    per_batch = {
        name: np.zeros((nb, num_layers))
        for name in ("bal", "tok_tail", "tok_mean", "disp_tail", "comb_tail", "a2a_mean", "layer_mean")
    }
    layers = range(num_layers)
    it = track(layers, total=num_layers, description="cost model") if progress else layers
    for li in it:
        ex = by_layer[li]  # [k, T]; arrays are [k, T] so that reductions over k are over contiguous rows
        # destination GPU of every copy [k, T]
        if multi:
            cnt = routes.count[li][src, ex]
            dest = routes.choice[li][src, ex, tok % cnt]
        else:
            dest = routes.choice[li, 0, :, 0][ex]
        # compute
        load = np.bincount((bg + dest).ravel(), minlength=nb * g).reshape(nb, g)
        ct = load * tpt  # [B, G]
        # one transfer per destination GPU (dedupe: copy j counts unless an earlier copy went there) or per copy
        first = np.ones(dest.shape, dtype=bool)
        if opts.dedupe_dispatch:
            for j in range(1, k):
                for i in range(j):
                    first[j] &= dest[j] != dest[i]
        nxt = dest[0] if opts.token_movement == "follow" else src
        kd = (bg + src) * g + dest  # key (batch, from, to)
        kc = (bg + dest) * g + nxt
        d_cnt = np.bincount(kd[first], minlength=nb * g * g).reshape(nb, g, g)
        c_cnt = np.bincount(kc[first], minlength=nb * g * g).reshape(nb, g, g)
        pt_d = _pair_times(d_cnt, bpt, inv_bw, cross, nic_bps)
        pt_c = _pair_times(c_cnt, bpt, inv_bw, cross, nic_bps)
        # per token: slowest of its links / GPUs (duplicates do not change a max)
        tok_disp = pt_d.reshape(-1)[kd].max(axis=0)
        tok_comp = ct.reshape(-1)[bg + dest].max(axis=0)
        tok_comb = pt_c.reshape(-1)[kc].max(axis=0)

        tokens_per_gpu[li] = load.sum(axis=0)
        dispatch[li] = d_cnt.sum(axis=0)
        combine[li] = c_cnt.sum(axis=0)
        maxload = load.max(axis=1)
        per_batch["bal"][:, li] = np.where(maxload > 0, load.mean(axis=1) / np.maximum(maxload, 1), 1.0)
        per_batch["tok_tail"][:, li] = ct.max(axis=1)
        per_batch["tok_mean"][:, li] = tok_comp.reshape(nb, n).mean(axis=1)
        per_batch["disp_tail"][:, li] = pt_d.max(axis=(1, 2))
        per_batch["comb_tail"][:, li] = pt_c.max(axis=(1, 2))
        per_batch["a2a_mean"][:, li] = (tok_disp + tok_comb).reshape(nb, n).mean(axis=1)
        per_batch["layer_mean"][:, li] = (tok_disp + tok_comp + tok_comb).reshape(nb, n).mean(axis=1)
        src = nxt

    link_bytes = (dispatch + combine) * bpt * (~np.eye(g, dtype=bool))
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
        link_time_s=link_bytes * inv_bw,
        compute_time_s=tokens_per_gpu * tpt,
        cross_node=cross,
        batch_balancedness=per_batch["bal"],
        batch_token_tail_s=per_batch["tok_tail"],
        batch_token_mean_s=per_batch["tok_mean"],
        batch_dispatch_tail_s=per_batch["disp_tail"],
        batch_combine_tail_s=per_batch["comb_tail"],
        batch_a2a_mean_s=per_batch["a2a_mean"],
        batch_layer_mean_s=per_batch["layer_mean"],
        info={"placement": placement.name, "topology": topology.name, "tokens_dropped": t_all - used},
    )
