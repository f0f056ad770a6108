"""The expert-parallel MoE engine: a Mixtral-like block stack whose experts live on the ranks a placement names.

Modules (one job each): ``spec`` (model and engine options), ``weights`` (seeded weights), ``layers``
(RMSNorm, attention, SwiGLU, router), ``routing`` (who sends which token where), ``comm`` (process groups,
uneven all-to-all, phase clocks), ``dispatch`` (the fast path's device layout, count exchange, packed rows),
``experts`` (grouped GEMM of a rank's experts), ``moe_layer`` (dispatch / compute / combine, overlap), ``model`` (the block stack and
its single-process reference), ``batches`` (trace replay batches), ``placement_source`` (the placement a run
serves), ``measure`` (warm-up, measured iterations, per-layer tails), ``compare`` (engine against the cost
model), ``calibrate`` (expert compute time against token count). See ``docs/engine.md``.
"""
