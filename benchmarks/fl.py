"""Federated training timing: ``python -m benchmarks.fl [--quick] [--clients K] [--rounds R]``.

Synthetic defaults (``dataset=synthetic``: 10 classes, 32 dims; Dirichlet beta 0.1), 10 clients, 50 rounds,
FedAvg, with and without GGEUR (``augment.target_per_class=500``). Each arm is run twice on the same data:

- ``flower``: ``fedgeo.fl.run.run_federated`` (``fl.backend=inprocess``: Flower's ServerApp, ClientApp,
  messages and strategy, clients one after another in this process);
- ``plain``: the same training in one loop without Flower: the same normaliser, augmented sets, client
  updates (``FLStrategy.client_update`` with the same seeds), aggregation and per-round evaluation.

Both must end at the same accuracy (checked); one-time imports are paid before timing; the overhead of the simulation is ``flower / plain - 1`` of
the rounds' time (``overhead_rounds``; ``overhead_total`` includes Flower's preparation rounds), measured in
the same run, Flower and plain interleaved ``--repeats`` times (best kept). Target: under 20%.
Writes ``results/bench/fl/result.json``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common.experiment import RunContext, RunOutput, run_experiment
from common.log import RunLogger
from common.seeding import derive_seed
from common.threads import limit_threads
from fedgeo.augment import GGEUR, Augmenter, NoAugment
from fedgeo.classifier import TrainSettings
from fedgeo.federation import TestSet, client_datasets, client_normalizer, evaluate, normalized
from fedgeo.fl.run import run_federated
from fedgeo.fl.settings import FLSettings
from fedgeo.fl.strategy.base import ClientResult
from fedgeo.fl.strategy.fedavg import FedAvg
from fedgeo.fl.training import LocalOpts, get_params, set_params
from fedgeo.models import LinearModel
from fedgeo.partitions import DirichletSplit
from fedgeo.synthetic import SyntheticSource

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "results" / "bench" / "fl"


def plain_rounds(clients, test, augment: Augmenter, fl: FLSettings, train: TrainSettings, seed: int):
    """The federation's training without Flower; returns (per-round accuracies, per-round seconds)."""
    norm, _ = client_normalizer(SyntheticSource().normalize, clients)
    data, _ = augment.augment_all(normalized(norm, clients), test.num_classes, test.num_domains, seed)
    ts = TestSet(norm(test.features), test.labels, test.domains, test.domain_names)
    strategy, model = FedAvg(), LinearModel()
    net = model.make(test.dim, test.num_classes, seed=seed)
    glob = get_params(net)
    accs, walls = [], []
    for rnd in range(1, fl.rounds + 1):
        t0 = time.perf_counter()
        results = []
        for k, c in enumerate(data):
            opts = LocalOpts(
                fl.local_epochs, train.batch_size, fl.lr, fl.momentum, derive_seed(seed, "local", k, rnd)
            )
            local = model.make(test.dim, test.num_classes, seed=0)
            params, extras, _, _ = strategy.client_update(local, glob, c.features, c.labels, {}, {}, opts)
            results.append(ClientResult(params, clients[k].size, extras))  # fl.weight_by=raw
        glob, _ = strategy.aggregate(glob, results, {}, len(data))
        accs.append(evaluate(set_params(net, glob), ts)["acc"])
        walls.append(time.perf_counter() - t0)
    return accs, walls


def bench_arm(
    name: str, augment: Augmenter, clients, test, fl, train, seed: int, work: Path, repeats: int
) -> dict:
    """Flower then plain, ``repeats`` times interleaved (load on a shared machine drifts); the best total
    per mode, and the median per-round times of the best runs."""
    best: dict[str, tuple[float, list[float], float]] = {}
    for r in range(repeats):
        t0 = time.perf_counter()
        out = run_federated(clients, test, SyntheticSource().normalize, augment, LinearModel(), FedAvg(), train, fl,
                            seed, RunLogger([]), work / f"{name}{r}")  # fmt: skip
        total = time.perf_counter() - t0
        if "flower" not in best or total < best["flower"][0]:
            best["flower"] = (total, list(out.series["wall_s"]), out.metrics["prepare_s"])
        t1 = time.perf_counter()
        accs, walls = plain_rounds(clients, test, augment, fl, train, seed)
        total = time.perf_counter() - t1
        if "plain" not in best or total < best["plain"][0]:
            best["plain"] = (total, walls, 0.0)
        if accs[-1] != out.metrics["acc_final"]:
            raise AssertionError(f"{name}: plain loop {accs[-1]} != Flower {out.metrics['acc_final']}")
    (f_total, f_walls, prep), (p_total, p_walls, _) = best["flower"], best["plain"]
    return {
        f"{name}_flower_total_s": f_total,
        f"{name}_flower_prepare_s": prep,
        f"{name}_flower_rounds_s": float(sum(f_walls)),
        f"{name}_flower_round_s_median": float(np.median(f_walls)),
        f"{name}_plain_total_s": p_total,
        f"{name}_plain_rounds_s": float(sum(p_walls)),
        f"{name}_plain_round_s_median": float(np.median(p_walls)),
        f"{name}_overhead_rounds": float(sum(f_walls)) / float(sum(p_walls)) - 1.0,
        f"{name}_overhead_round_median": float(np.median(f_walls)) / float(np.median(p_walls)) - 1.0,
        f"{name}_overhead_total": f_total / p_total - 1.0,
        f"{name}_acc_final": out.metrics["acc_final"],
        f"{name}_n_train_mean": out.metrics["n_train_mean"],
    }


def warm_up() -> None:
    """Pay one-time costs before any timing (torch imports its compiler on the first optimizer, ~3 s)."""
    torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1)


def body(ctx: RunContext, clients_n: int, rounds: int, target: int, repeats: int) -> RunOutput:
    limit_threads()
    warm_up()
    train_set, test = SyntheticSource().load({}, ctx.seed)
    part = DirichletSplit(clients=clients_n, beta=0.1).split(train_set, ctx.seed)
    clients = client_datasets(train_set, part)
    fl, train = FLSettings(rounds=rounds, clients=clients_n), TrainSettings()
    metrics: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-fl-") as work:  # the clients' files, not kept
        for name, aug in (
            ("none", NoAugment()),
            ("ggeur", GGEUR(target_per_class=target, multi_domain=False)),
        ):
            ctx.log.info(f"arm {name}: {clients_n} clients x {rounds} rounds, Flower then plain")
            metrics |= bench_arm(name, aug, clients, test, fl, train, ctx.seed, Path(work), repeats)
    for name in ("none", "ggeur"):
        ctx.log.info(
            f"{name}: round (median) {metrics[f'{name}_flower_round_s_median']:.3f} s (Flower) vs "
            f"{metrics[f'{name}_plain_round_s_median']:.3f} s (plain); overhead "
            f"{100 * metrics[f'{name}_overhead_rounds']:.1f}% of the rounds' time, "
            f"{100 * metrics[f'{name}_overhead_total']:.1f}% in total"
        )
    return RunOutput(metrics=metrics)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="5 rounds (a smoke run)")
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--target", type=int, default=500, help="GGEUR's target_per_class")
    ap.add_argument("--out", type=Path, default=OUT, help="run folder for result.json")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=2, help="interleaved Flower/plain repeats (best kept)")
    args = ap.parse_args(argv)
    rounds = 5 if args.quick else args.rounds
    config = {"benchmark": "fl", "clients": args.clients, "rounds": rounds, "target_per_class": args.target,
              "dataset": "synthetic", "partition": "dirichlet beta=0.1", "strategy": "fedavg", "seed": args.seed, "repeats": args.repeats}  # fmt: skip
    run_experiment(
        config,
        "fed",
        lambda ctx: body(ctx, args.clients, rounds, args.target, args.repeats),
        run_dir=args.out,
    )


if __name__ == "__main__":
    main()
