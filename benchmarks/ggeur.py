"""GGEUR timing: ``python -m benchmarks.ggeur [--quick] [--repeats R]``.

Two settings, each on synthetic anisotropic embeddings split over 10 clients by Dirichlet(0.5) label skew
(every client first gets one sample per class):

- ``c100``: 100 classes x 512 dims, 500 training samples per class (CIFAR-100's size), target 500 per class.
- ``c10``: 10 classes x 512 dims, 5000 training samples per class (CIFAR-10's size), target 5000 per class
  (the official code's CIFAR-10 target).

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

from benchmarks.timing import timed
from common.experiment import RunContext, RunOutput, run_experiment
from fedgeo.ggeur import aggregate_stats, augment_client, class_shapes, client_stats, noise_factors
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


def bench_setting(name: str, C: int, d: int, per_class: int, target: int, K: int, repeats: int, seed: int):
    syn = make_synthetic(num_classes=C, dim=d, train_per_class=per_class, test_per_class=1, seed=seed)
    X, y = syn.train.features, syn.train.labels
    part = dirichlet_label_skew(y, K, 0.5, seed=seed, num_classes=C)
    clients = [(X[i], y[i]) for i in part.client_indices]
    t_stats, stats = timed(lambda: [client_stats(a, b, C) for a, b in clients], repeats)
    t_agg, pooled = timed(lambda: aggregate_stats(stats), repeats)
    t_central, _ = timed(
        lambda: [np.cov(X[y == c].T.astype(np.float64), bias=True) for c in range(C)], repeats
    )
    t_eig, _ = timed(lambda: class_shapes(pooled), repeats)
    t_chol, shapes = timed(lambda: noise_factors(pooled, "sqrt"), repeats)

    def gen_all() -> int:
        rngs = [np.random.default_rng(k) for k in range(K)]
        return sum(
            augment_client(a, b, shapes, r, target_per_class=target)[1].size - b.size
            for (a, b), r in zip(clients, rngs, strict=True)
        )

    t_gen, n_gen = timed(gen_all, repeats)
    # Same-run baseline on client 0 only (an SVD per class makes it slow), against ours on client 0.
    a0, b0 = clients[0]
    t_gen0, out0 = timed(
        lambda: augment_client(a0, b0, shapes, np.random.default_rng(0), target_per_class=target), 1
    )
    t_base, n_base = timed(
        lambda: baseline_generation(a0, b0, pooled.covs, target, np.random.default_rng(0)), 1
    )
    assert out0[1].size - b0.size == n_base, (out0[1].size, n_base)
    return {
        f"{name}_stats_s": t_stats,
        f"{name}_aggregate_s": t_agg,
        f"{name}_central_cov_s": t_central,
        f"{name}_aggregate_vs_central": t_agg / t_central,
        f"{name}_eig_s": t_eig,
        f"{name}_cholesky_s": t_chol,
        f"{name}_server_step_s": t_agg + t_chol,
        f"{name}_cholesky_speedup_vs_eig": t_eig / t_chol,
        f"{name}_generate_s": t_gen,
        f"{name}_generated": float(n_gen),
        f"{name}_generated_per_s": n_gen / t_gen,
        f"{name}_client0_generate_s": t_gen0,
        f"{name}_client0_baseline_mvn_s": t_base,
        f"{name}_generate_speedup_vs_mvn": t_base / t_gen0,
    }


def body(ctx: RunContext, settings: list[tuple], repeats: int) -> RunOutput:
    metrics: dict[str, float] = {}
    for s in settings:
        ctx.log.info(f"setting {s[0]}: C={s[1]} d={s[2]} per_class={s[3]} target={s[4]} clients={s[5]}")
        metrics |= bench_setting(*s, repeats=repeats, seed=ctx.seed)
    print(
        f"{'setting':8s} {'stats s':>8s} {'aggr s':>8s} {'central s':>9s} {'eig s':>7s} {'gen s':>8s} "
        f"{'generated':>10s} {'mvn s c0':>8s} {'speedup':>8s}"
    )
    for s in settings:
        n = s[0]
        print(
            f"{n:8s} {metrics[f'{n}_stats_s']:8.2f} {metrics[f'{n}_aggregate_s']:8.2f} "
            f"{metrics[f'{n}_central_cov_s']:9.2f} {metrics[f'{n}_eig_s']:7.2f} {metrics[f'{n}_generate_s']:8.2f} "
            f"{int(metrics[f'{n}_generated']):10d} {metrics[f'{n}_client0_baseline_mvn_s']:8.2f} "
            f"{metrics[f'{n}_generate_speedup_vs_mvn']:7.1f}x"
        )
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
