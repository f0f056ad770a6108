"""Benchmarks: ``python -m benchmarks.<name>``; each writes a run record under ``results/bench/<name>/``."""
