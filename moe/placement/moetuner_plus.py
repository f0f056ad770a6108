"""MoETuner+ (beyond the paper): the best of MoETuner+replicas, EPLB, GRACE and ExFlow+replicas on the profiled
trace, then a local search that lowers the cost model's modelled MoE-layer time itself.

1. Candidates, all with the same memory (at most ``replicas`` extra expert slots per layer): MoETuner with
   hot replicas (stage 1 balances load, stage 2 places clusters for inter-layer locality), EPLB (load only),
   GRACE (grouping by inter-layer affinity under a load cap, then replicas) and ExFlow (fewest cross-GPU
   consecutive-layer pairs) with hot replicas, and across nodes ExFlow with hot replicas kept inside the hot
   GPU's node (``add_hot_replicas(node_of=...)``). Each is replayed on the profiling
   trace (at most ``search_tokens`` tokens) with the run's topology and ``eval`` rules; the fastest starts.
2. Local search, layer by layer for ``sweeps`` sweeps: moves that keep every GPU's slot count: swap two
   experts (or replicas) between GPUs (the hottest GPU's experts against the coolest GPUs', best-balancing
   partner first, plus ``random_moves`` random pairs), and retarget a replica (a copy of the expert with the
   lowest load per copy becomes a copy of the expert with the highest one). A move is kept when the modelled
   time of its layer plus the next one (whose dispatch starts where this layer leaves the tokens) drops.
   With ``cross_node_sweeps > 0`` (default 1) cluster-level moves across nodes run first, under the same
   acceptance rule and the search's cap: whole-group and node exchanges and Kernighan-Lin swap sequences
   between GPUs of different nodes (``moe.placement.cluster_moves``).
3. With ``node_balance_sweeps > 0`` (default 1), swaps between GPUs of one node that even out the
   cross-node traffic of each GPU's NIC and its compute (``moe.placement.node_balance``), same acceptance
   rule, same cap.

Everything is measured on the profiling part only; the run judges the result on the evaluation part. The
search is deterministic for a given seed (a move budget, not a time budget; ``time_limit_s`` caps the
candidates and, separately, the search, and a search that hits its cap reports status ``time_limit``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.config import schema
from common.errors import ConfigError, InputError
from common.log import get_logger
from moe.cost_model import EvalOptions
from moe.layer_model import LayerModel, LayerReplay
from moe.placement.base import Layer, Placement, swap_experts
from moe.placement.cluster_moves import group_exchanges, kl_proposals, same_layer_counts
from moe.placement.deadline import Deadline
from moe.placement.eplb import eplb
from moe.placement.exflow import ExFlow
from moe.placement.grace import grace
from moe.placement.moetuner import MoETuner
from moe.placement.node_balance import copies_per_expert, node_balance_proposals, remote_counts
from moe.placement.placer import PlacementProblem, Placer
from moe.placement.profiled import ProfiledProblem
from moe.placement.replicas import add_hot_replicas

# Where the search's phases end, as shares of its budget: the cluster moves by 40%, the local search by 70%
# when the node balancing follows (else by 100%); a phase that ends early leaves its time to the next. Without
# them one cluster pass on 32 ranks (h100_cluster4x8) outlasted a 10 s budget and the local search tried nothing.
SEARCH_ENDS = (0.4, 0.7)


def _gpu_loads(layer: Layer, load: np.ndarray) -> np.ndarray:
    copies = copies_per_expert(layer, load.size)
    return np.array([sum(load[e] / copies[e] for e in gpu) for gpu in layer])


def _swap(layer: Layer, g1: int, x: int, g2: int, y: int) -> Layer | None:
    if x in layer[g2] or y in layer[g1]:
        return None
    return swap_experts(layer, g1, x, g2, y)


def candidate_moves(
    layer: Layer, load: np.ndarray, rng: np.random.Generator, random_moves: int
) -> list[Layer]:
    """New versions of one layer's assignment (see the module docstring), best guesses first."""
    g = len(layer)
    gl = _gpu_loads(layer, load)
    hot = int(np.argmax(gl))
    out: list[Layer] = []
    for x in sorted(layer[hot], key=lambda e: -load[e])[:3]:
        for g2 in np.argsort(gl)[:3].tolist():
            if g2 == hot or not layer[g2]:
                continue
            target = (gl[hot] - gl[g2]) / 2  # ideal load difference moved
            y = min(layer[g2], key=lambda e: abs(load[x] - load[e] - target))
            if load[y] < load[x] and (cand := _swap(layer, hot, x, g2, y)) is not None:
                out.append(cand)
    for _ in range(random_moves):
        g1, g2 = rng.choice(g, size=2, replace=False).tolist()
        if layer[g1] and layer[g2]:
            x, y = int(rng.choice(layer[g1])), int(rng.choice(layer[g2]))
            if (cand := _swap(layer, g1, x, g2, y)) is not None:
                out.append(cand)
    out.extend(_retarget(layer, load))
    return out


def _retarget(layer: Layer, load: np.ndarray) -> list[Layer]:
    """Turn one copy of the replicated expert with the least load per copy into a copy of the hottest one."""
    copies = copies_per_expert(layer, load.size)
    if copies.max() < 2:
        return []
    per = load / np.maximum(copies, 1)
    cold = int(np.argmin(np.where(copies >= 2, per, np.inf)))
    out = []
    for hot in np.argsort(-per)[:2].tolist():
        if hot == cold:
            continue
        for gi, gpu in enumerate(layer):
            if cold in gpu and hot not in gpu:
                new = [list(x) for x in layer]
                new[gi][new[gi].index(cold)] = hot
                out.append(new)
                break
    return out


def _try(model: LayerModel, st: SearchState, li: int, cand: Layer) -> bool:
    """Take ``cand`` as layer ``li`` when the modelled time of that layer plus the next one drops."""
    if st.reps is not None:
        return _try_local(model, st, li, cand)
    num_layers = len(st.layers)
    t_l, nxt = model.time(li, cand, st.src[li])
    old = st.times[li] + (st.times[li + 1] if li + 1 < num_layers else 0.0)
    t_n = model.time(li + 1, st.layers[li + 1], nxt)[0] if li + 1 < num_layers else 0.0
    if t_l + t_n < old * (1 - 1e-9):  # kept: the tokens' positions change in every later layer
        st.layers[li] = cand
        tail, pos = model.forward(st.layers[li:], li, st.src[li])
        st.times[li:] = tail
        st.src[li + 1 :] = pos[1:]
        return True
    return False


def _try_local(model: LayerModel, st: SearchState, li: int, cand: Layer) -> bool:
    """``_try`` with position-local rules (``LayerModel.positions_are_local``): layer ``li`` is replayed on the
    tokens the move touches only, and the next layer sees only those tokens' new positions; the same times,
    bit for bit, as replaying both layers whole."""
    assert st.reps is not None
    num_layers = len(st.layers)
    mv = model.moved(li, st.reps[li], st.layers[li], cand, st.src[li])
    old = st.times[li] + (st.times[li + 1] if li + 1 < num_layers else 0.0)
    nxt = None
    if li + 1 < num_layers:
        nxt = model.shifted(li + 1, st.reps[li + 1], mv.tok, st.src[li + 1][mv.tok], mv.nxt)
    t_n = nxt.time if nxt is not None else 0.0
    if not mv.time + t_n < old * (1 - 1e-9):
        return False
    st.layers[li], st.reps[li], st.times[li] = cand, mv.applied(st.reps[li]), mv.time
    if nxt is not None:
        st.reps[li + 1], st.times[li + 1], st.src[li + 1] = nxt, t_n, st.reps[li].nxt
    return True


def _first_kept(model: LayerModel, st: SearchState, li: int, props: list[Layer]) -> tuple[int, bool]:
    """Try ``props`` for layer ``li`` in order until one is kept: (proposals tried, whether one was kept)."""
    for i, cand in enumerate(props):
        if _try(model, st, li, cand):
            return i + 1, True
    return len(props), False


@dataclass
class SearchState:
    """The assignment being improved, its per-layer times and the token positions entering every layer."""

    layers: list[Layer]
    times: np.ndarray
    src: list[np.ndarray]
    reps: list[LayerReplay] | None = None  # every layer's replay, with position-local rules

    @classmethod
    def of(cls, model: LayerModel, start: Placement) -> SearchState:
        """``start``'s layers (copied), their times and positions on ``model`` (and replays, with
        position-local rules)."""
        layers = [[list(g) for g in layer] for layer in start.assignment]
        if not model.positions_are_local:
            times, src = model.forward(start.assignment)
            return cls(layers, times, src)
        reps = model.replays(layers)
        return cls(layers, np.array([r.time for r in reps]), [model.start, *(r.nxt for r in reps)], reps)

    def result(self, before: float, tried: int, kept: int, num_experts: int) -> tuple[Placement, dict]:
        """The placement reached and a phase's report (profile time before / after, moves tried / kept)."""
        report = {"profile_time_before_s": before, "profile_time_after_s": float(self.times.sum())}
        report |= {"moves_tried": tried, "moves_kept": kept}
        return Placement(self.layers, num_experts=num_experts, name="moetuner_plus"), report


def local_search(
    model: LayerModel,
    load: np.ndarray,
    start: Placement,
    sweeps: int,
    random_moves: int,
    seed: int,
    deadline: Deadline,
) -> tuple[Placement, dict]:
    """Improve ``start`` move by move on ``model`` (see the module docstring); returns it and a report."""
    st = SearchState.of(model, start)
    before = float(st.times.sum())
    rng = np.random.default_rng([seed, 7])
    kept = tried = 0
    num_layers = len(st.layers)
    for _ in range(sweeps):
        for li in range(num_layers):
            for cand in candidate_moves(st.layers[li], load[li], rng, random_moves):
                if deadline.expired():
                    break
                tried += 1
                kept += _try(model, st, li, cand)
    return st.result(before, tried, kept, start.num_experts)


def cluster_search(
    model: LayerModel,
    problem: ProfiledProblem,
    start: Placement,
    sweeps: int,
    kl_steps: int,
    deadline: Deadline,
    top: int,
) -> tuple[Placement, dict]:
    """Cluster-level moves across nodes (``moe.placement.cluster_moves``), ``sweeps`` passes over the layers;
    a layer's proposals are rebuilt after every move kept, at most ``top`` of them tried each time. Returns
    the placement and a report."""
    st = SearchState.of(model, start)
    before = float(st.times.sum())
    node_of = problem.topology.node_of()
    q = same_layer_counts(model.by_layer.transpose(2, 0, 1), problem.num_experts)
    load = np.asarray(problem.load, dtype=np.float64)
    tried = kept = 0
    for _ in range(sweeps):
        for li in range(len(st.layers)):
            moved = True
            while moved and not deadline.expired():
                moved = False
                groups = group_exchanges(st.layers[li], node_of)
                kl = kl_proposals(st.layers, li, problem.pairs, q[li], load[li], node_of, kl_steps)
                # Over the cap (many ranks: 384 GPU pairs across 4 nodes of 8), the Kernighan-Lin proposals
                # go first, largest proxy gain first; under it every proposal is tried in the usual order.
                props = groups + kl if len(groups) + len(kl) <= top else (kl + groups)[:top]
                n, moved = _first_kept(model, st, li, props)
                tried, kept = tried + n, kept + moved
    return st.result(before, tried, kept, start.num_experts)


def node_balance_search(
    model: LayerModel,
    problem: ProfiledProblem,
    start: Placement,
    sweeps: int,
    top: int,
    deadline: Deadline,
) -> tuple[Placement, dict]:
    """Within-node swaps that even out NIC traffic and compute (``moe.placement.node_balance``), ``sweeps``
    passes over the layers; a layer's proposals are rebuilt after every move kept (at most ``4 E`` moves per
    layer and pass). Returns the placement and a report."""
    st = SearchState.of(model, start)
    before = float(st.times.sum())
    node_of = problem.topology.node_of()
    load = np.asarray(problem.load, dtype=np.float64)
    tried = kept = 0
    for _ in range(sweeps):
        for li in range(len(st.layers)):
            for _move in range(4 * problem.num_experts):
                if deadline.expired():
                    break
                remote = remote_counts(
                    st.layers[li], model.by_layer[li], st.src[li], node_of, problem.num_experts
                )
                props = node_balance_proposals(st.layers[li], remote, load[li], node_of, top)
                n, moved = _first_kept(model, st, li, props)
                tried, kept = tried + n, kept + moved
                if not moved:
                    break
    return st.result(before, tried, kept, start.num_experts)


def _candidates(problem: ProfiledProblem, opts: MoETunerPlus, deadline: Deadline) -> dict[str, Placement]:
    """The starting placements with ``opts.replicas`` extra slots per layer (EPLB only when it fits; ExFlow
    with node-local replicas only across nodes), by ``deadline`` (each solver candidate a ``moetuner_share``
    of it, at least 0.5 s)."""
    g = problem.num_gpus
    left = max(0.5, deadline.left())
    mt = MoETuner(
        time_limit_s=opts.moetuner_share * left, replicas=opts.replicas, max_joint_vars=opts.max_joint_vars
    )
    out = {"moetuner+replicas": mt.place(problem)}
    if (problem.num_experts + opts.replicas) % g == 0 and problem.gpus_per_node <= g:
        try:
            out["eplb"] = eplb(problem.load, g, problem.gpus_per_node, num_redundant=opts.replicas)
        except InputError:
            pass
    out["grace"] = grace(problem, opts.replicas)
    left = max(0.5, deadline.left())
    ex = ExFlow(time_limit_s=min(left, opts.moetuner_share * opts.time_limit_s)).place(problem)
    assignment, _ = add_hot_replicas(ex.assignment, problem.load, opts.replicas)
    out["exflow+replicas"] = Placement(assignment, num_experts=problem.num_experts, name="exflow")
    node_of = problem.topology.node_of()
    if opts.replicas and len(set(node_of.tolist())) > 1:  # several nodes: copies stay inside a node
        assignment, _ = add_hot_replicas(ex.assignment, problem.load, opts.replicas, node_of)
        out["exflow+node_replicas"] = Placement(assignment, num_experts=problem.num_experts, name="exflow")
    return out


@schema("placement", "moetuner_plus")
@dataclass(frozen=True)
class MoETunerPlus(Placer):
    """MoETuner+: the best start of MoETuner+replicas / EPLB / GRACE / ExFlow+replicas (and, across nodes,
    ExFlow with node-local replicas), then a cost-model local search.

    Attributes:
        replicas: extra expert slots per layer for every candidate (the YAML: one per EP rank).
        time_limit_s: cap on the candidates and, separately, on the search.
        moetuner_share: part of the budget for each solver candidate (MoETuner, ExFlow).
        max_joint_vars: MoETuner's largest joint stage 2 ILP.
        search_tokens: profiling tokens replayed by the search (the first ones; whole batches).
        sweeps: passes over the layers.
        random_moves: random swaps tried per layer and sweep, besides the load-guided ones.
        cross_node_sweeps: passes of cluster-level moves across nodes (whole-group exchanges, Kernighan-Lin
            sequences; ``moe.placement.cluster_moves``) before the local search (default 1; 0 = none; they
            find nothing to move on one node).
        kl_steps: most swaps in one Kernighan-Lin sequence.
        cluster_top: most cluster proposals tried per layer before the pass moves on (all of them on a few
            ranks: 9 on 4 ranks over 2 nodes; on 32 ranks the Kernighan-Lin ones with the largest gain).
        node_balance_sweeps: passes of within-node swaps that even out the cross-node traffic of each GPU's
            NIC and its compute, after the local search (default 1; 0 = none; nothing to do on one node;
            ``moe.placement.node_balance``).
        node_balance_top: proposals tried per layer before the pass moves on to the next layer.
    """

    name = "moetuner_plus"
    replicas: int = 0
    time_limit_s: float = 60.0
    moetuner_share: float = 0.3
    max_joint_vars: int = 20000
    search_tokens: int = 8192
    sweeps: int = 2
    random_moves: int = 6
    cross_node_sweeps: int = 1
    kl_steps: int = 8
    cluster_top: int = 32
    node_balance_sweeps: int = 1
    node_balance_top: int = 16

    def __post_init__(self) -> None:
        super().__post_init__()  # the time budget
        for key, lo in (
            ("replicas", 0),
            ("max_joint_vars", 0),
            ("search_tokens", 1),
            ("sweeps", 0),
            ("random_moves", 0),
            ("cross_node_sweeps", 0),
            ("kl_steps", 1),
            ("cluster_top", 1),
            ("node_balance_sweeps", 0),
            ("node_balance_top", 1),
        ):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ConfigError(key, f"expected an integer >= {lo}, got {v!r}")
        if not isinstance(self.moetuner_share, int | float) or not 0 < self.moetuner_share < 1:
            raise ConfigError("moetuner_share", f"expected a number in (0, 1), got {self.moetuner_share!r}")

    def _search(
        self, model: LayerModel, problem: ProfiledProblem, start: Placement, deadline: Deadline
    ) -> tuple[Placement, dict, bool]:
        """Cluster moves, local search, node balancing from ``start``, each phase by its share of ``deadline``
        (``SEARCH_ENDS``). Returns the placement, the report and whether a phase stopped at its deadline."""
        balance = self.node_balance_sweeps > 0
        cluster_end, local_end = SEARCH_ENDS if balance else (SEARCH_ENDS[0], 1.0)
        cut, cluster = False, None
        if self.cross_node_sweeps:
            phase = deadline.fraction(cluster_end)
            start, cluster = cluster_search(
                model, problem, start, self.cross_node_sweeps, self.kl_steps, phase, self.cluster_top
            )
            cut |= phase.expired()
        phase = deadline.fraction(local_end)
        placement, report = local_search(
            model, problem.load, start, self.sweeps, self.random_moves, problem.seed, phase
        )
        cut |= phase.expired()
        if cluster is not None:
            report["cross_node"] = cluster
        if balance:
            placement, report["node_balance"] = node_balance_search(
                model, problem, placement, self.node_balance_sweeps, self.node_balance_top, deadline
            )
            cut |= deadline.expired()
        return placement, report, cut

    def place(self, problem: PlacementProblem) -> Placement:
        if not isinstance(problem, ProfiledProblem) or problem.experts is None or problem.topology is None:
            raise InputError(
                "moetuner_plus: needs the profiling trace and the topology (a ProfiledProblem, as runners.moe_place "
                "builds it)"
            )
        budget = Deadline.after(self.time_limit_s)
        starts = _candidates(problem, self, budget)
        experts = np.asarray(problem.experts)[: self.search_tokens]
        opts = problem.options or EvalOptions()
        model = LayerModel(experts, problem.topology, opts, problem.slot_order, problem.num_experts)
        scores = {k: float(model.forward(p.assignment)[0].sum()) for k, p in starts.items()}
        best = min(scores, key=lambda k: (scores[k], k))
        # The search has its own cap (the candidates may overrun theirs): a move budget, so runs repeat.
        placement, report, cut = self._search(model, problem, starts[best], Deadline.after(self.time_limit_s))
        status = "time_limit" if cut else "heuristic"
        placement.info = {
            "status": status,
            "start": best,
            "start_profile_times_s": scores,
            "search": report,
            "solve_time_s": round(budget.elapsed(), 6),
            "notes": [f"started from {best}; {report['moves_kept']} of {report['moves_tried']} moves kept"],
        }
        get_logger("moe.placement.moetuner_plus").info(placement.info["notes"][0])
        return placement
