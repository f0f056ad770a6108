"""Thin entry points: Hydra / torchrun / CLI. They turn configs into typed arguments; no algorithm lives here."""
