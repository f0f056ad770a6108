"""MoETuner's reported results (Go & Mahajan, arXiv 2502.06643), as data for the comparison tables.

Reductions are fractions (0.36 = 36% lower than Megatron's contiguous placement) of MoETuner against the
contiguous baseline on Mixtral-8x7B, EP=4; the speedup is the paper's end-to-end training-step speedup
(it includes non-MoE work, so the MoE-layer speedup that our cost model reports should be larger).
Source: the paper's results section, as restated in the project's shared ``papers.md`` (section 1).
"""

from __future__ import annotations

# Our metric stem -> the paper's name for it.
PAPER_METRICS = {
    "token_time_tail_reduction": "token-processing tail latency",
    "token_time_mean_reduction": "token-processing mean latency",
    "a2a_time_tail_reduction": "all-to-all tail latency",
    "a2a_time_mean_reduction": "all-to-all mean latency",
    "speedup_vs_contiguous": "end-to-end speedup (paper) / MoE-layer speedup (ours)",
}

# Setting -> metric -> the paper's value (reductions as fractions; speedup as a ratio).
PAPER_RESULTS: dict[str, dict[str, float]] = {
    "single_node": {  # 8 x H100, NVLink, 4 EP x 2 TP
        "token_time_tail_reduction": 0.36,
        "token_time_mean_reduction": 0.348,
        "a2a_time_tail_reduction": 0.363,
        "a2a_time_mean_reduction": 0.354,
        "speedup_vs_contiguous": 1.093,
    },
    "multi_node": {  # 2 x 8 H200, 800 Gb/s network, 4 EP x 4 TP
        "token_time_tail_reduction": 0.27,
        "token_time_mean_reduction": 0.225,
        "a2a_time_tail_reduction": 0.305,
        "a2a_time_mean_reduction": 0.247,
        "speedup_vs_contiguous": 1.175,
    },
}

# Topology preset -> the paper's setting it reproduces.
TOPOLOGY_SETTING = {"paper_single_node": "single_node", "paper_multi_node": "multi_node"}

# The placement the paper's numbers are for.
PAPER_PLACEMENT = "moetuner"


def paper_value(topology: str, placement: str, metric: str) -> float | None:
    """The paper's number for this (topology preset, placement, metric), or ``None`` when it reports none."""
    setting = TOPOLOGY_SETTING.get(topology)
    if setting is None or placement != PAPER_PLACEMENT:
        return None
    return PAPER_RESULTS[setting].get(metric)
