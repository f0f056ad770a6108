"""MoETuner stage 2 for few GPUs, exactly: a search over the chain of layers (beyond the paper).

With G GPUs a layer's mapping is one of ``K = G!`` permutations, and a boundary's cost depends only on the
permutations of its two layers: ``T[l, p, q]`` (``[L-1, K, K]``, the slowest link of boundary l with layer
l on permutation p and layer l+1 on q). Without the memory constraint stage 2 is a shortest path through
the layers; with it (every GPU holds ``lo..hi`` experts over the model) two things are computed:

- a Lagrangian bound: the memory rows priced by ``w [G]`` per expert turn it back into a shortest path,
  whose length (less the priced targets) is a lower bound for every mapping that meets memory; the prices
  follow projected subgradient steps;
- a search over states (layer, permutation, experts per GPU so far) by dynamic programming: for each state
  the cheapest prefix is kept; states that cannot reach the memory window, or whose Lagrangian bound cannot
  beat the best mapping known, are dropped. When no layer needs more than ``max_states`` states the result
  is the optimum; otherwise the best states by bound are kept (then a heuristic) and the Lagrangian bound
  is the proof.

Symmetry breaking: relabelling the GPUs by a permutation that keeps the bandwidth matrix (any relabelling on
one node; GPUs inside a node and whole nodes across equal nodes) changes neither cost nor memory, so layer
0 only takes the first permutation (in ``itertools`` order) of each class.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from moe.placement.deadline import Deadline

MAX_PERMUTATIONS = 120  # G <= 5


@dataclass
class ChainResult:
    """``mapping [L, G]`` (cluster -> GPU) or ``None``; ``bound`` valid for every mapping within the memory
    window; ``exact``: the search ran untruncated (``mapping`` is optimal, or ``None``: no mapping exists)."""

    mapping: np.ndarray | None
    objective: float | None
    bound: float
    exact: bool
    max_states: int


def permutations(g: int) -> np.ndarray:
    """int64 ``[G!, G]``: every cluster -> GPU permutation."""
    return np.array(list(itertools.permutations(range(g))), dtype=np.int64)


def _inverse_rows(perms: np.ndarray) -> np.ndarray:
    inv = np.empty_like(perms)
    inv[np.arange(perms.shape[0])[:, None], perms] = np.arange(perms.shape[1])[None, :]
    return inv


def canonical_starts(perms: np.ndarray, bandwidth: np.ndarray) -> np.ndarray:
    """Indices of the first permutation of each class under the relabellings ``phi`` with
    ``B[phi(a), phi(b)] = B[a, b]``."""
    autos = [phi for phi in perms if np.array_equal(bandwidth[np.ix_(phi, phi)], bandwidth)]
    index = {tuple(p): i for i, p in enumerate(perms.tolist())}
    keep = []
    for i, p in enumerate(perms):
        if min(index[tuple(phi[p].tolist())] for phi in autos) == i:
            keep.append(i)
    return np.array(keep, dtype=np.int64)


def transition_costs(ctraffic: np.ndarray, bandwidth: np.ndarray, perms: np.ndarray) -> np.ndarray:
    """``T [L-1, K, K]``: boundary l's slowest link with layer l on ``perms[p]`` and layer l+1 on
    ``perms[q]`` (pair counts per GB/s)."""
    g = bandwidth.shape[0]
    off = ~np.eye(g, dtype=bool)
    inv_b = np.where(off, 1.0 / np.where(off, bandwidth, 1.0), 0.0)
    inv = _inverse_rows(perms)
    out = np.empty((ctraffic.shape[0], perms.shape[0], perms.shape[0]))
    for li, c in enumerate(ctraffic):
        x = c[inv[:, None, :, None], inv[None, :, None, :]] * inv_b  # [K, K, G, G]
        out[li] = x.reshape(x.shape[0], x.shape[1], -1).max(axis=2)
    return out


def memory_adds(sizes: np.ndarray, perms: np.ndarray) -> np.ndarray:
    """int64 ``[L, K, G]``: experts GPU g receives from layer l on ``perms[p]``."""
    inv = _inverse_rows(perms)
    return sizes[:, inv]


def _paths(t: np.ndarray, node: np.ndarray, starts: np.ndarray) -> tuple[float, np.ndarray]:
    """Shortest path over the layers (node costs ``node [L, K]``, edge costs ``t``), layer 0 in ``starts``;
    returns its length and the permutation of every layer."""
    num_layers, k = node.shape
    v = np.full(k, np.inf)
    v[starts] = node[0, starts]
    back = np.zeros((num_layers, k), dtype=np.int64)
    for li in range(num_layers - 1):
        tot = v[:, None] + t[li]
        back[li + 1] = tot.argmin(axis=0)
        v = tot[back[li + 1], np.arange(k)] + node[li + 1]
    path = np.empty(num_layers, dtype=np.int64)
    path[-1] = int(v.argmin())
    for li in range(num_layers - 1, 0, -1):
        path[li - 1] = back[li, path[li]]
    return float(v.min()), path


def cost_to_go(t: np.ndarray, node: np.ndarray) -> np.ndarray:
    """``[L, K]``: the cheapest rest of the chain from (layer l, permutation p), layer l's node cost excluded."""
    num_layers, k = node.shape
    h = np.zeros((num_layers, k))
    for li in range(num_layers - 2, -1, -1):
        h[li] = (t[li] + (node[li + 1] + h[li + 1])[None, :]).min(axis=1)
    return h


def lagrangian(
    t: np.ndarray, madd: np.ndarray, lo: float, hi: float, starts: np.ndarray, upper: float, iters: int = 300
) -> tuple[float, np.ndarray, list[np.ndarray]]:
    """Best Lagrangian bound found over ``iters`` subgradient steps on prices ``lam+`` (``mem <= hi``) and
    ``lam-`` (``mem >= lo``); returns the bound, the prices ``w = lam+ - lam-`` [G] that gave it, and the
    memory-feasible paths met on the way (primal candidates)."""
    g = madd.shape[2]
    lp, lm = np.zeros(g), np.zeros(g)
    best, best_w, theta, stall = -np.inf, np.zeros(g), 1.0, 0
    feasible = []
    layers = np.arange(madd.shape[0])
    for _ in range(iters):
        w = lp - lm
        length, path = _paths(t, madd @ w, starts)
        value = length - _const(w, lo, hi)
        mem = madd[layers, path].sum(axis=0)
        if (mem <= hi).all() and (mem >= lo).all():
            feasible.append(path)
        if not np.isfinite(best) or value > best + 1e-12 * abs(best):
            best, best_w, stall = value, w.copy(), 0
        else:
            stall += 1
            if stall >= 10:
                theta, stall = theta / 2, 0
        sp, sm = mem - hi, lo - mem
        norm = float((np.maximum(sp, -lp) ** 2).sum() + (np.maximum(sm, -lm) ** 2).sum())
        if norm == 0 or theta < 1e-6:
            break
        target = upper if np.isfinite(upper) else 1.05 * abs(max(best, value)) + 1e-9
        step = theta * max(target - value, 1e-9 * max(1.0, abs(value))) / norm
        lp, lm = np.maximum(0.0, lp + step * sp), np.maximum(0.0, lm + step * sm)
    return float(best), best_w, feasible


@dataclass
class _Chain:
    """What the state search needs: ``t [L-1, K, K]``, ``madd [L, K, G]``, the memory window, layer 0's
    permutations, prices ``w`` and the priced cost-to-go ``h [L, K]`` with its constant ``const``."""

    t: np.ndarray
    madd: np.ndarray
    lo: int
    hi: int
    starts: np.ndarray
    w: np.ndarray
    h: np.ndarray
    const: float


def _keys(perm: np.ndarray, mem: np.ndarray, hi: int) -> np.ndarray:
    """One integer per distinct (permutation, memory vector) row (``mem`` in ``0..hi``)."""
    radix = hi + 1
    if (int(perm.max(initial=0)) + 1) * radix ** mem.shape[1] >= 2**62:
        return np.unique(np.column_stack([perm, mem]), axis=0, return_inverse=True)[1].ravel()
    key = perm.astype(np.int64)
    for col in mem.T:
        key = key * radix + col
    return key


def search(
    ch: _Chain, upper: float, max_states: int, deadline: Deadline
) -> tuple[float, np.ndarray | None, bool]:
    """Dynamic programming over (permutation, memory) states; see the module docstring. Returns the best
    cost below ``upper`` (else ``inf``), its path of permutation indices (or ``None``) and whether the search
    was exact (never truncated, finished before ``deadline``)."""
    num_layers, k, g = ch.madd.shape
    rem_min = np.concatenate([np.cumsum(ch.madd.min(axis=(1, 2))[::-1])[::-1][1:], [0]])
    rem_max = np.concatenate([np.cumsum(ch.madd.max(axis=(1, 2))[::-1])[::-1][1:], [0]])
    perm, mem, cost = ch.starts.copy(), ch.madd[0, ch.starts].copy(), np.zeros(ch.starts.size)
    history = [(perm, np.zeros(perm.size, dtype=np.int64))]
    exact = True
    for li in range(num_layers - 1):
        if deadline.expired():
            return np.inf, None, False
        q = np.tile(np.arange(k), perm.size)
        src = np.repeat(np.arange(perm.size), k)
        new_cost = cost[src] + ch.t[li][perm[src], q]
        new_mem = mem[src] + ch.madd[li + 1, q]
        ok = ((new_mem + rem_min[li + 1] <= ch.hi) & (new_mem + rem_max[li + 1] >= ch.lo)).all(axis=1)
        bound = new_cost + new_mem @ ch.w + ch.h[li + 1, q] - ch.const
        ok &= bound < upper * (1 - 1e-12) - 1e-12
        q, src, new_cost, new_mem, bound = q[ok], src[ok], new_cost[ok], new_mem[ok], bound[ok]
        order = np.argsort(new_cost, kind="stable")
        _, first = np.unique(_keys(q[order], new_mem[order], ch.hi), return_index=True)
        keep = order[first]
        if keep.size > max_states:
            keep = keep[np.argsort(bound[keep], kind="stable")[:max_states]]
            exact = False
        perm, mem, cost = q[keep], new_mem[keep], new_cost[keep]
        history.append((perm, src[keep]))
        if perm.size == 0:
            return np.inf, None, exact
    done = ((mem >= ch.lo) & (mem <= ch.hi)).all(axis=1)
    if not done.any():
        return np.inf, None, exact
    i = int(np.flatnonzero(done)[np.argmin(cost[done])])
    path = np.empty(num_layers, dtype=np.int64)
    for li in range(num_layers - 1, -1, -1):
        path[li] = history[li][0][i]
        i = int(history[li][1][i])
    return float(cost.min(where=done, initial=np.inf)), path, exact


def solve_chain(
    ctraffic: np.ndarray,
    sizes: np.ndarray,
    bandwidth: np.ndarray,
    window: tuple[int, int],
    deadline: Deadline,
    upper: tuple[float, np.ndarray | None] = (np.inf, None),
    max_states: int = 20000,
) -> ChainResult:
    """Stage 2 by the chain search for ``G <= 5`` GPUs with every GPU's experts in ``window = (lo, hi)``.

    ``upper``: a known mapping's cost and the mapping (or ``(inf, None)``); returned when nothing better is
    found. Returns a ``ChainResult``; ``bound`` is the optimum when the search was exact.
    """
    g = bandwidth.shape[0]
    perms = permutations(g)
    t = transition_costs(ctraffic, bandwidth, perms)
    madd = memory_adds(sizes, perms)
    starts = canonical_starts(perms, bandwidth)
    lo, hi = window
    best_cost, best_map = upper
    lag, w, candidates = lagrangian(t, madd, lo, hi, starts, best_cost)
    layers = np.arange(t.shape[0])
    for path in candidates:
        c = float(t[layers, path[:-1], path[1:]].sum())
        if c < best_cost:
            best_cost, best_map = c, perms[path]
    node = madd @ w
    ch = _Chain(t, madd, lo, hi, starts, w, cost_to_go(t, node), _const(w, lo, hi))
    states = max_states
    for cap in (min(2000, max_states), max_states):  # a cheap beam for an upper bound, then the full search
        found, path, exact = search(ch, best_cost, cap, deadline)
        if path is not None and found < best_cost:
            best_cost, best_map = found, perms[path]
        if exact:
            bound = best_cost if best_map is not None else np.inf
            return ChainResult(best_map, _finite(best_cost), float(bound), True, cap)
        states = cap
    return ChainResult(best_map, _finite(best_cost), float(lag), False, states)


def _const(w: np.ndarray, lo: int, hi: int) -> float:
    """The priced targets subtracted from a path's priced length: ``hi`` for positive prices (``mem <= hi``),
    ``lo`` for negative ones (``mem >= lo``)."""
    return float(hi * np.clip(w, 0, None).sum() - lo * np.clip(-w, 0, None).sum())


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None
