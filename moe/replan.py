"""Placement over time: the re-placement policies of ``mode=replan`` as pure functions.

Windows ``0..N-1`` of a trace; ``targets[k]`` is the placement made from scratch on window ``k`` (it could
serve window ``k + 1``). A policy returns the placement that serves each window ``1..N-1``:

- ``static``: ``targets[0]`` for every window (place once).
- ``periodic``: ``targets[k - 1]`` serves window ``k`` (re-place from scratch every window).
- ``incremental``: window 1 gets ``targets[0]``; window ``k >= 2`` gets the previous placement moved toward
  ``targets[k - 1]`` by at most ``budget`` expert copies per layer (``incremental_step``). ``budget = None``
  (unlimited) is ``periodic``; ``budget = 0`` is ``static``.

``incremental_step``, per layer: when the whole difference to the target fits the budget, take the target's
layer (the placer's own optimum, which also accounts for the layers around it); otherwise apply, greedily,
the step toward the target with the largest modelled gain per copy moved, while the gain is positive and the
layer's moved copies (counted against the window's starting placement, ``moe.migration.layer_moves``) stay
within the budget. A step puts one missing target copy ``(gpu b, expert y)`` in place: it overwrites a copy
on ``b`` that the target does not keep there, either one with another copy elsewhere (``replace``: 1 copy)
or, when every such copy is the expert's last, one that moves to the GPU that gives ``y`` up (``swap``: 2
copies; preferred is an expert the target wants there). ``gain(li, layer)`` is the cost model's seconds saved
by layer ``li`` when its assignment becomes ``layer`` (``moe.replan_gain.LayerGain``).
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

from common.errors import InputError
from moe.migration import layer_moves
from moe.placement.base import Placement

POLICIES = ("static", "periodic", "incremental")
CANDIDATES_PER_COPY = 4  # scored candidate steps per copy of budget when a shortlist is asked for
Layer = list[list[int]]
Gain = Callable[[int, Layer], float]


def plan(policy: str, targets: Sequence[Placement], budget: int | None = None,
         gain_for: Callable[[int, Placement], Gain] | None = None, min_ratio: float = 0.0) -> list[Placement]:  # fmt: skip
    """The placements serving windows ``1..N-1`` (``len(targets)`` of them) under ``policy``.

    Args:
        policy: one of ``POLICIES``.
        targets: ``targets[k]`` placed from scratch on window ``k``; at least one.
        budget: ``incremental`` only: copies per layer per re-placement; ``None`` = unlimited.
        gain_for: ``incremental`` with a finite budget: ``gain_for(k, current)`` is the gain function of
            window ``k``'s profile (the window the target was made on) around ``current``.
        min_ratio: ``incremental``: the least gain per copy moved (seconds per serving step) a greedy step
            needs, e.g. one copy's migration seconds / the steps it is amortised over.
    """
    if not targets:
        raise InputError("replan: no target placements")
    if policy == "static":
        return [targets[0]] * len(targets)
    if policy == "periodic":
        return list(targets)
    if policy != "incremental":
        raise InputError(f"replan: policy must be one of {list(POLICIES)}, got {policy!r}")
    out = [targets[0]]
    for k in range(1, len(targets)):
        gain = None if budget is None or gain_for is None else gain_for(k, out[-1])
        out.append(incremental_step(out[-1], targets[k], budget, gain, min_ratio))
    return out


def incremental_step(
    current: Placement,
    target: Placement,
    budget: int | None,
    gain: Gain | None,
    min_ratio: float = 0.0,
    load: np.ndarray | None = None,
) -> Placement:
    """``current`` moved toward ``target`` by at most ``budget`` copies per layer (module docstring).

    ``load`` (float ``[L, E]``, the profile's token copies per expert): when given, only the steps of the
    ``CANDIDATES_PER_COPY x budget`` most loaded missing experts of a layer are scored (online speed).
    """
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 0):
        raise InputError(f"replan: move budget must be an integer >= 0 or None, got {budget!r}")
    if budget is None:
        return target
    layers, moved = [], 0
    for li, (cur, tgt) in enumerate(zip(current.assignment, target.assignment, strict=True)):
        if len(layer_moves(cur, tgt)) <= budget:
            new = [list(g) for g in tgt]
        elif budget == 0 or gain is None:
            new = [list(g) for g in cur]
        else:
            shortlist = None if load is None else CANDIDATES_PER_COPY * budget
            new = greedy_layer(cur, tgt, budget, lambda lay, i=li: gain(i, lay), min_ratio,
                               None if load is None else load[li], shortlist)  # fmt: skip
        moved += len(layer_moves(cur, new))
        layers.append(new)
    info = {"policy": "incremental", "budget": budget, "moved_copies": moved, "target": target.name}
    return Placement(layers, num_experts=current.num_experts, name=target.name, info=info)


def greedy_layer(
    start: Layer,
    target: Layer,
    budget: int,
    gain: Callable[[Layer], float],
    min_ratio: float = 0.0,
    load: np.ndarray | None = None,
    shortlist: int | None = None,
) -> Layer:
    """One layer's greedy steps toward ``target`` by gain per copy moved (module docstring); a step needs a
    gain per added copy above ``min_ratio``. With ``load [E]`` and ``shortlist``, only the steps of the
    ``shortlist`` most loaded missing experts are candidates (ties: GPU, then expert id).

    Lazy greedy: every missing copy's step is scored once; then the best stale score is re-scored on the
    current layer and applied when it still beats the next stale score, else put back with its new score.
    """
    cur = [list(g) for g in start]
    base = gain(cur)
    todo = missing(cur, target)
    if load is not None and shortlist is not None:
        todo = sorted(todo, key=lambda c: (-float(load[c[1]]), c))[:shortlist]
    heap = [(-math.inf, b, y) for b, y in todo]
    heapq.heapify(heap)
    while heap:
        _, b, y = heapq.heappop(heap)
        step = step_for(cur, target, b, y)
        if step is None:
            continue
        cost = len(layer_moves(start, step))
        if cost > budget:
            continue
        g = gain(step)
        ratio = (g - base) / max(cost - len(layer_moves(start, cur)), 0.5)  # undoing a move costs nothing
        if ratio <= min_ratio or g <= base:
            continue
        if heap and -heap[0][0] > ratio:
            heapq.heappush(heap, (-ratio, b, y))
            continue
        cur, base = step, g
    return cur


def missing(cur: Layer, target: Layer) -> list[tuple[int, int]]:
    """``(gpu, expert)`` copies the target holds and ``cur`` does not."""
    return [(b, y) for b, want in enumerate(target) for y in sorted(set(want) - set(cur[b]))]


def candidate_steps(cur: Layer, target: Layer) -> list[Layer]:
    """One step per missing target copy (module docstring); layers are new lists."""
    steps = (step_for(cur, target, b, y) for b, y in missing(cur, target))
    return [s for s in steps if s is not None]


def step_for(cur: Layer, target: Layer, b: int, y: int) -> Layer | None:
    """The step that puts expert ``y`` on GPU ``b`` (``replace`` or ``swap``), ``None`` when there is none."""
    if y in cur[b]:
        return None
    surplus = sorted(set(cur[b]) - set(target[b]))
    if not surplus:
        return None
    counts = Counter(e for gpu in cur for e in gpu)
    spare = [x for x in surplus if counts[x] >= 2]
    if spare:
        return _replaced(cur, b, max(spare, key=lambda e: (counts[e], -e)), y)
    return _swap_for(cur, target, b, y, surplus)


def _swap_for(cur: Layer, target: Layer, b: int, y: int, surplus: list[int]) -> Layer | None:
    """``y`` from a GPU that gives it up to ``b``, and a surplus expert of ``b`` back there (or ``None``)."""
    for a, gpu in enumerate(cur):
        if a == b or y not in gpu or y in target[a]:
            continue
        fits = [x for x in surplus if x not in gpu]
        if fits:
            x = min(fits, key=lambda e: (e not in target[a], e))
            return _replaced(_replaced(cur, b, x, y), a, y, x)
    return None


def _replaced(layer: Layer, g: int, old: int, new: int) -> Layer:
    out = [list(x) for x in layer]
    out[g] = sorted([e for e in out[g] if e != old] + [new])
    return out
