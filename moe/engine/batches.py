"""The batches the engine runs: each rank's rows, inputs from the seed, and (trace replay) the trace's choices.

Batch b holds the tokens ``b * n .. (b+1) * n - 1`` of the replayed token stream (``n`` = ``batch_tokens``);
rank r holds rows ``r * n / G .. (r+1) * n / G - 1`` of it, the cost model's ``first_layer_start=uniform``.
In trace replay batch b is the trace's batch ``b mod (tokens // n)``; a token's global index (which picks
among an expert's replicas) is its row in the trace, as in the cost model.

Slot order: a trace whose ``slot_order`` attribute says its k choices are ranked (highest gate first) and
that has no gate weights gets weights decreasing with the slot (``1/(j+1)``, normalised); otherwise the slots
are an unordered set and a trace without weights gets equal weights ``1/k``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from common.errors import ConfigError
from moe.engine.model import Batch
from moe.engine.weights import input_hidden
from moe.trace import Trace

UNORDERED = (None, "", "none", "unordered", "set", "sorted", "sorted_ids")


def slots_ranked(trace: Trace) -> bool:
    """True when the trace declares its slots ranked (a ``slot_order`` attribute not in ``UNORDERED``)."""
    order = getattr(trace, "slot_order", None)
    return isinstance(order, str) and order.lower() not in UNORDERED


def default_gate_weights(top_k: int, ranked: bool) -> np.ndarray:
    """float32 ``[k]`` weights for a trace without weights: ``1/(j+1)`` normalised if ranked, else ``1/k``."""
    w = 1.0 / np.arange(1, top_k + 1, dtype=np.float64) if ranked else np.ones(top_k)
    return (w / w.sum()).astype(np.float32)


@dataclass
class BatchSource:
    """Makes ``Batch`` es for one rank.

    Attributes:
        batch_tokens: n, tokens per batch over all ranks.
        world_size: G.
        hidden_size: H.
        seed: the run seed (inputs are drawn per batch from it).
        experts: trace replay: int ``[T, L, k]`` choices (first ``L`` layers of the trace); ``None``: router.
        weights: optional float ``[T, L, k]`` gate weights of the trace.
        ranked: the trace's slots are ranked (see the module docstring).
        renormalize: divide trace weights by their per-token sum.
    """

    batch_tokens: int
    world_size: int
    hidden_size: int
    seed: int
    experts: np.ndarray | None = None
    weights: np.ndarray | None = None
    ranked: bool = False
    renormalize: bool = True

    def __post_init__(self) -> None:
        n, g = self.batch_tokens, self.world_size
        if n % g:
            raise ConfigError("engine.batch_tokens", f"must be divisible by the world size {g}, got {n}")
        if self.experts is not None and self.experts.shape[0] < n:
            raise ConfigError(
                "engine.batch_tokens",
                f"the evaluation trace has {self.experts.shape[0]} tokens, fewer than one batch of {n}",
            )

    @property
    def num_batches(self) -> int | None:
        """Distinct batches (trace replay), ``None`` for the router (every batch is new)."""
        return None if self.experts is None else self.experts.shape[0] // self.batch_tokens

    def trace_batch(self, b: int) -> int:
        """The stream batch that iteration ``b`` runs."""
        nb = self.num_batches
        return b if nb is None else b % nb

    def rows(self, rank: int) -> slice:
        per = self.batch_tokens // self.world_size
        return slice(rank * per, (rank + 1) * per)

    def batch(self, b: int, rank: int) -> Batch:
        """Rank ``rank``'s part of iteration ``b``."""
        tb = self.trace_batch(b)
        rows = self.rows(rank)
        first = tb * self.batch_tokens
        gtok = torch.arange(first + rows.start, first + rows.stop, dtype=torch.int64)
        x = input_hidden(self.seed, tb, rows, self.hidden_size)
        if self.experts is None:
            return Batch(x=x, gtok=gtok)
        sl = slice(first + rows.start, first + rows.stop)
        ids = self.experts[sl].astype(np.int64)
        if self.weights is not None:
            w = self.weights[sl].astype(np.float32)
            if self.renormalize:
                w = w / np.maximum(w.sum(axis=2, keepdims=True), np.float32(1e-12))
        else:
            w = np.broadcast_to(default_gate_weights(ids.shape[2], self.ranked), ids.shape)
        routing = [
            (
                torch.from_numpy(np.ascontiguousarray(ids[:, li])),
                torch.from_numpy(np.ascontiguousarray(w[:, li])),
            )
            for li in range(ids.shape[1])
        ]
        return Batch(x=x, gtok=gtok, routing=routing)
