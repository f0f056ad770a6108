"""The option schemas of ``moe`` (``@schema`` classes), installed by ``common.config.install_schemas``.

A new placement, trace source or other option class is added here once; its YAML in ``conf/<group>/``
then starts from ``/schema/<group>/<name>``.
"""

from __future__ import annotations

from moe.cost_model import EvalOptions
from moe.engine.spec import EngineOptions, MoEModelSpec
from moe.placement.eplb import EPLB
from moe.placement.exflow import ExFlow
from moe.placement.grace import Grace
from moe.placement.greedy import Greedy
from moe.placement.moetuner import MoETuner
from moe.placement.moetuner_plus import MoETunerPlus
from moe.placement.simple import Contiguous, RandomPlacement, RoundRobin
from moe.replan_options import ReplanOptions
from moe.topology import Topology
from moe.trace_source import FileTrace, SyntheticTrace

# One entry per class; a class's ``@schema(group, name)`` marks say which options it is.
SCHEMAS: tuple[type, ...] = (
    # placement
    Contiguous, RoundRobin, RandomPlacement, Greedy, EPLB, ExFlow, MoETuner, MoETunerPlus, Grace,
    # trace, topology, eval, replan
    FileTrace, SyntheticTrace, Topology, EvalOptions, ReplanOptions,
    # the expert-parallel engine: model shapes and options
    MoEModelSpec, EngineOptions,
)  # fmt: skip
