"""MoE routing traces, expert placement algorithms, the cost model and the expert-parallel engine."""
