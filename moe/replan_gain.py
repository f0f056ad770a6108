"""The incremental policy's gain model: the cost model's time saved by changing one layer's assignment.

``LayerGain(experts, current, ...)`` replays the profile window ``experts`` through ``current`` once
(``moe.layer_model.LayerModel.forward``) and keeps each layer's time and the token positions entering it;
``gain(li, layer)`` replays only layer ``li`` with assignment ``layer`` from those positions. The effect of
a changed layer on where tokens enter the next one is left out (the greedy changes few copies per window).
"""

from __future__ import annotations

import numpy as np

from moe.cost_model import EvalOptions
from moe.layer_model import LayerModel
from moe.placement.base import Placement
from moe.stats import expert_load
from moe.topology import Topology


class LayerGain:
    """Seconds per serving step (the mean batch) that layer ``li`` saves under a new assignment.

    Args:
        experts: int ``[T, L, k]`` profile choices; the first ``tokens`` (whole batches) are replayed.
        current: the placement the gains are measured against.
        topology, options, slot_order: as for ``moe.cost_model.evaluate_placement``.
        tokens: profile tokens replayed (at least one batch is kept).
    """

    def __init__(
        self, experts: np.ndarray, current: Placement, topology: Topology, options: EvalOptions,
        slot_order: str, tokens: int | None = None,
    ) -> None:  # fmt: skip
        ex = np.asarray(experts)
        if tokens is not None:
            ex = ex[: max(int(tokens), min(options.batch_tokens or ex.shape[0], ex.shape[0]))]
        self.model = LayerModel(ex, topology, options, slot_order, current.num_experts)
        self.load = expert_load(ex, current.num_experts)  # [L, E] token copies, the candidates' shortlist
        self.base, self.pos = self.model.forward(current.assignment)
        self.batches = max(self.model.nb, 1)
        self.calls = 0

    def __call__(self, li: int, layer: list[list[int]]) -> float:
        """Seconds per step saved by layer ``li`` with assignment ``layer`` (negative: slower)."""
        self.calls += 1
        t, _ = self.model.time(li, layer, self.pos[li])
        return float(self.base[li] - t) / self.batches
