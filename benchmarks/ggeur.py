"""GGEUR timing: ``python -m benchmarks.ggeur [--quick] [--repeats R]``.

Two settings, each on synthetic anisotropic embeddings split over 10 clients by Dirichlet(0.5) label skew
(every client first gets one sample per class):

- ``c100``: 100 classes x 512 dims, 500 training samples per class (CIFAR-100's size), target 500 per class.
- ``c10``: 10 classes x 512 dims, 5000 training samples per class (CIFAR-10's size), target 5000 per class
  (the official code's CIFAR-10 target).
- ``c65`` (server step only): 65 classes x 512 dims, 240 samples per class (Office-Home's size, so every
  pooled covariance is rank-deficient and takes the jittered Cholesky path).

The server step (``server_step_s``) is what the server runs on the clients' packed uploads
(``aggregate_packed`` then ``noise_factors(.., "sqrt")``); ``eig_s`` (one batched ``eigh``) and
``eig_loop_s`` (one ``eigh`` per class) are timed for comparison (``noise_scale=lambda`` needs them).

Timed steps: client statistics (all clients), server aggregation (streaming pooled covariance), class shapes
(eigendecomposition), and generation for all clients. Baselines measured in the same run: the covariance of
the pooled raw data (``np.cov`` per class, what a central server holding all data would compute) for
aggregation, and ``Generator.multivariate_normal`` (one SVD-based call per class, as the official code
samples ``N(x, S)``) for generation on client 0, against this generator on the same client.
Writes ``results/bench/ggeur/result.json`` and prints a table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.timing import timed
from common.experiment import RunContext, RunOutput, run_experiment
from fedgeo.ggeur import (
    aggregate_packed,
    aggregate_stats,
    augment_client,
    class_shapes,
    client_stats,
    noise_factors,
    pack_sym,
)
from fedgeo.partitions import dirichlet_label_skew
from fedgeo.synthetic import make_synthetic

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "results" / "bench" / "ggeur"


def baseline_generation(X: np.ndarray, y: np.ndarray, covs: np.ndarray, target: int, rng) -> int:
    """Official-code style: per class, ``multivariate_normal(0, S)`` noise added to repeated anchors."""
    total = 0
    for c in np.flatnonzero(np.bincount(y, minlength=covs.shape[0])):
        rows = np.flatnonzero(y == c)
        m = max(target - rows.size, 0)
        if m == 0:
            continue
        noise = rng.multivariate_normal(np.zeros(covs.shape[1]), covs[c], size=m, method="svd")
        total += (X[rows[np.arange(m) % rows.size]] + noise).shape[0]
    return total


def reference_server_step(packed: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> np.ndarray:
    """The server step as it was before (baseline): a two-index unpack of every upload, a per-class merge
    loop, a batched ``np.linalg.cholesky`` with the same jitter rule; returns the factors (float32)."""
    C, d = packed[0][1].shape
    iu = np.triu_indices(d)
    counts, means, m2 = np.zeros(C, np.int64), np.zeros((C, d)), np.zeros((C, d, d))
    for cnt, mu, P in packed:
        covs = np.zeros((C, d, d))
        covs[:, iu[0], iu[1]] = P
        covs[:, iu[1], iu[0]] = P
        for c in np.flatnonzero(cnt):
            na, nb = int(counts[c]), int(cnt[c])
            n = na + nb
            delta = mu[c] - means[c]
            means[c] += delta * (nb / n)
            m2[c] += nb * covs[c] + np.outer(delta, delta) * (na * nb / n)
            counts[c] = n
    live = np.flatnonzero(counts >= 2)
    S = np.stack([(m2[c] / counts[c] + (m2[c] / counts[c]).T) / 2 for c in live])
    out = np.zeros((C, d, d), np.float32)
    try:
        out[live] = np.linalg.cholesky(S)
    except np.linalg.LinAlgError:
        for j, c in enumerate(live):
            scale, jitter = max(float(np.trace(S[j])) / d, 1e-300), 0.0
            for power in range(-12, 1):
                try:
                    out[c] = np.linalg.cholesky(S[j] + jitter * np.eye(d))
                    break
                except np.linalg.LinAlgError:
                    jitter = scale * 10.0**power
    return out


def bench_server(pooled, stats, repeats: int) -> dict[str, float]:
    """The server step on packed uploads against the previous implementation (same factors, checked), and
    the eigendecompositions it avoids (batched and per class)."""
    packed = [(st.counts, st.means, pack_sym(st.covs)) for st in stats]
    t_server, nf_new = timed(lambda: noise_factors(aggregate_packed(packed), "sqrt"), repeats)
    t_ref, ref = timed(lambda: reference_server_step(packed), repeats)
    if not np.array_equal(ref, nf_new.factors):
        raise AssertionError("the server step's factors differ from the previous implementation's")
    t_eig, _ = timed(lambda: class_shapes(pooled), repeats)
    live = pooled.covs[pooled.counts >= 2]
    t_loop, _ = timed(lambda: [np.linalg.eigh(S) for S in live], repeats)
    t_chol, nf = timed(lambda: noise_factors(pooled, "sqrt"), repeats)
    return {"server_step_s": t_server, "server_step_reference_s": t_ref, "server_step_speedup": t_ref / t_server,
            "eig_s": t_eig, "eig_loop_s": t_loop, "cholesky_s": t_chol,
            "cholesky_jittered": float(nf.clipped), "cholesky_speedup_vs_eig": t_eig / t_chol}  # fmt: skip


def bench_setting(
    name: str, C: int, d: int, per_class: int, target: int, K: int, server_only: bool = False, *,
    repeats: int, seed: int,
) -> dict[str, float]:  # fmt: skip
    syn = make_synthetic(num_classes=C, dim=d, train_per_class=per_class, test_per_class=1, seed=seed)
    X, y = syn.train.features, syn.train.labels
    part = dirichlet_label_skew(y, K, 0.5, seed=seed, num_classes=C)
    clients = [(X[i], y[i]) for i in part.client_indices]
    t_stats, stats = timed(lambda: [client_stats(a, b, C) for a, b in clients], repeats)
    t_agg, pooled = timed(lambda: aggregate_stats(stats), repeats)
    out = {"stats_s": t_stats, "aggregate_s": t_agg, **bench_server(pooled, stats, repeats)}
    if not server_only:
        out |= bench_generation(X, y, C, clients, pooled, target, repeats)
    return {f"{name}_{k}": v for k, v in out.items()}


def bench_generation(X, y, C: int, clients, pooled, target: int, repeats: int) -> dict[str, float]:
    """Generation for every client, and against ``multivariate_normal`` (as the official code) on client 0."""
    t_central, _ = timed(
        lambda: [np.cov(X[y == c].T.astype(np.float64), bias=True) for c in range(C)], repeats
    )
    shapes = noise_factors(pooled, "sqrt")
    K = len(clients)

    def gen_all() -> int:
        rngs = [np.random.default_rng(k) for k in range(K)]
        return sum(
            augment_client(a, b, shapes, r, target_per_class=target)[1].size - b.size
            for (a, b), r in zip(clients, rngs, strict=True)
        )

    t_gen, n_gen = timed(gen_all, repeats)
    a0, b0 = clients[0]
    t_gen0, out0 = timed(
        lambda: augment_client(a0, b0, shapes, np.random.default_rng(0), target_per_class=target), 1
    )
    t_base, n_base = timed(
        lambda: baseline_generation(a0, b0, pooled.covs, target, np.random.default_rng(0)), 1
    )
    assert out0[1].size - b0.size == n_base, (out0[1].size, n_base)
    return {
        "central_cov_s": t_central,
        "generate_s": t_gen,
        "generated": float(n_gen),
        "generated_per_s": n_gen / t_gen,
        "client0_generate_s": t_gen0,
        "client0_baseline_mvn_s": t_base,
        "generate_speedup_vs_mvn": t_base / t_gen0,
    }


def body(ctx: RunContext, settings: list[tuple], repeats: int) -> RunOutput:
    metrics: dict[str, float] = {}
    for s in settings:
        ctx.log.info(f"setting {s[0]}: C={s[1]} d={s[2]} per_class={s[3]} target={s[4]} clients={s[5]}")
        metrics |= bench_setting(*s, repeats=repeats, seed=ctx.seed)
    cols = ("stats_s", "aggregate_s", "server_step_s", "server_step_reference_s", "cholesky_s", "eig_s", "eig_loop_s", "generate_s",
            "generated", "client0_baseline_mvn_s", "generate_speedup_vs_mvn")  # fmt: skip
    table = pd.DataFrame(
        [{"setting": s[0], **{c: metrics.get(f"{s[0]}_{c}", float("nan")) for c in cols}} for s in settings]
    )
    print(table.to_markdown(index=False, floatfmt=".3g"))
    return RunOutput(metrics=metrics)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="128 dims and a tenth of the samples (a smoke run)")
    ap.add_argument("--repeats", type=int, default=1, help="timed repeats per step (the best is kept)")
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--out", type=Path, default=OUT, help="run folder for result.json")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    d, scale = (128, 10) if args.quick else (512, 1)
    settings = [
        ("c100", 100, d, 500 // scale, 500 // scale, args.clients),
        ("c10", 10, d, 5000 // scale, 5000 // scale, args.clients),
        ("c65", 65, 512, 240, 0, args.clients, True),  # the server step at Office-Home's size, both modes
    ]
    config = {
        "benchmark": "ggeur",
        "settings": [list(s) for s in settings],
        "repeats": args.repeats,
        "seed": args.seed,
    }
    run_experiment(config, "fed", lambda ctx: body(ctx, settings, args.repeats), run_dir=args.out)


if __name__ == "__main__":
    main()
