"""Choosing the local learning rate before training, on the clients' own training data only.

A new dataset needs a working step size, and a fixed default can leave a run at chance (loss ``ln C``)
without any warning. With ``fl.lr_candidates`` set, the server asks every client (``query.lrsearch``) to
score each candidate on its own data: the client holds out ``HOLDOUT`` of its training rows (a seeded
split), trains the initial global model on the rest with the candidate for ``fl.lr_search_rounds`` local
budgets (the run's ``fl.local_budget``, plain SGD), and replies with the held-out cross-entropy per candidate
and its held-out count. Nothing but these numbers leaves a client, and the test set is never touched. The
server picks the candidate with the lowest held-out loss averaged over clients (weighted by held-out rows;
ties and non-finite losses go to the smaller learning rate).

This scores local progress, not federated accuracy: it is a budget check (does SGD move at this step size
within the run's budget?), cheap enough to run before every preset's run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
from torch import nn

from common.errors import SuiteError
from common.seeding import derive_seed
from fedgeo.fl.training import Arrays, LocalOpts, local_sgd, mean_loss, set_params

HOLDOUT = 0.2  # share of a client's training rows held out to score the candidates


def holdout_split(n: int, seed: int, fraction: float = HOLDOUT) -> tuple[np.ndarray, np.ndarray]:
    """``(train rows int64 [n - m], held-out rows int64 [m])`` of a seeded permutation, with
    ``m = round(fraction * n)`` kept in ``1..n-1`` (``m = 0`` when ``n < 2``)."""
    order = np.random.default_rng(seed).permutation(n)
    m = 0 if n < 2 else min(max(round(fraction * n), 1), n - 1)
    return np.sort(order[m:]), np.sort(order[:m])


def candidate_losses(
    make_model: Callable[[], nn.Module],
    init: Arrays,
    X: np.ndarray,
    y: np.ndarray,
    candidates: Sequence[float],
    opts: LocalOpts,
    rounds: int,
    seed: int,
) -> tuple[np.ndarray, int]:
    """One client's held-out cross-entropy (nats) per candidate learning rate.

    Args:
        make_model: a fresh model of the run's architecture.
        init: the initial global parameters every candidate starts from.
        X: ``float32 [n, d]`` the client's training features; y: ``int [n]`` labels.
        candidates: learning rates ``[L]``.
        opts: the run's local budget (its ``lr`` is replaced by each candidate).
        rounds: local budgets each candidate trains for.
        seed: the client's search seed (split and batch order).

    Returns:
        ``(losses float64 [L], held-out rows)``; ``inf`` where training diverged, ``nan`` for every
        candidate when the client has fewer than 2 rows.
    """
    tr, ho = holdout_split(len(y), seed)
    if ho.size == 0:
        return np.full(len(candidates), np.nan), 0
    X_tr, y_tr = X[tr], y[tr]
    out = np.empty(len(candidates))
    for i, lr in enumerate(candidates):
        model = set_params(make_model(), init)
        for r in range(rounds):
            local_sgd(model, X_tr, y_tr, replace(opts, lr=float(lr), seed=derive_seed(seed, "round", r)))
        loss = mean_loss(model, X[ho], y[ho])
        out[i] = loss if np.isfinite(loss) else np.inf
    return out, int(ho.size)


def pick_lr(losses: np.ndarray, weights: np.ndarray, candidates: Sequence[float]) -> tuple[float, np.ndarray]:
    """The chosen learning rate and the mean held-out loss per candidate.

    Args:
        losses: ``float [K, L]`` per client and candidate (rows of a client without held-out data ignored).
        weights: ``float [K]`` held-out rows per client.
        candidates: ``[L]`` learning rates.

    Returns:
        ``(lr, mean float64 [L])``: the candidate of the lowest weighted mean loss; ties (and all-inf) go to
        the smallest learning rate.

    Raises:
        SuiteError: no client had held-out rows.
    """
    losses, w = np.asarray(losses, dtype=np.float64), np.asarray(weights, dtype=np.float64)
    keep = w > 0
    if not keep.any():
        raise SuiteError("fl.lr_candidates: no client had two or more training rows to score the candidates")
    with np.errstate(invalid="ignore"):
        mean = (losses[keep] * w[keep, None]).sum(axis=0) / w[keep].sum()
    mean = np.where(np.isfinite(mean), mean, np.inf)
    order = np.lexsort((np.asarray(candidates, dtype=np.float64), mean))
    return float(candidates[int(order[0])]), mean
