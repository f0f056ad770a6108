"""The routing trace: which experts every token chose at every MoE layer.

File format (``.npz``): ``experts`` integer ``[tokens, layers, top_k]``, optional ``weights`` (same shape,
float), optional ``prompt_offsets`` int64 ``[prompts + 1]``, ``num_experts`` (int), optional metadata.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Trace:
    """A routing trace.

    Attributes:
        experts: integer array ``[tokens, layers, top_k]`` of expert ids in ``0..num_experts-1``.
        num_experts: routed experts per layer (E).
        weights: optional float array ``[tokens, layers, top_k]`` of gate weights.
        prompt_offsets: optional int64 ``[prompts + 1]``; prompt p is rows ``offsets[p]:offsets[p+1]``.
        meta: free-form provenance (model name, source, layer ids, ...).
    """

    experts: np.ndarray
    num_experts: int
    weights: np.ndarray | None = None
    prompt_offsets: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        return int(self.experts.shape[0])

    @property
    def num_layers(self) -> int:
        return int(self.experts.shape[1])

    @property
    def top_k(self) -> int:
        return int(self.experts.shape[2])
