"""The placement and stats runners' view of config group ``trace``: a thin layer over ``moe.trace_source``.

A ``trace`` node (``conf/trace/*.yaml``, ``_target_`` a ``moe.trace_source`` class) becomes a
``TraceSource``; it loads the whole trace (``max_tokens`` applied) and splits it by prompt into profile and
evaluation parts (``profile_fraction``; ``split_seed``, default the run's seed).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from moe.trace import Trace
from moe.trace_source import TraceSource, resolve_trace_path, trace_source

__all__ = ["load_trace_from_config", "load_traces", "resolve_trace_path", "split_from_config", "trace_source"]


def load_trace_from_config(trace_cfg: Mapping[str, Any] | TraceSource, seed: int) -> Trace:
    """The whole trace a ``trace`` config node describes, after ``max_tokens`` (``seed``: the run's)."""
    return trace_source(trace_cfg).load(seed)


def split_from_config(
    trace: Trace, trace_cfg: Mapping[str, Any] | TraceSource, seed: int = 0
) -> tuple[Trace, Trace]:
    """(profile, evaluation) of ``trace`` by the node's ``profile_fraction`` and ``split_seed`` (else ``seed``)."""
    return trace_source(trace_cfg).split(trace, seed)


def load_traces(trace_cfg: Mapping[str, Any] | TraceSource, seed: int) -> tuple[Trace, Trace]:
    """(profile, evaluation) traces for a ``trace`` config node; the placement runner's entry point."""
    return trace_source(trace_cfg).profile_and_evaluation(seed)
