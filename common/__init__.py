"""Shared spine of the suite: seeding, run records, logging sinks, aggregation and plots.

Nothing here knows about MoE or federated learning; ``moe`` and ``fedgeo`` depend on ``common``, never
the other way round.
"""
