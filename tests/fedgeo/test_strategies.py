"""Every strategy's client update and aggregation against a hand computation on a tiny problem.

Problem: a linear model (2 inputs, 2 classes), two samples, one full batch per step, plain SGD.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedgeo.fl.strategy.base import ClientResult
from fedgeo.fl.strategy.fedavg import FedAvg
from fedgeo.fl.strategy.feddyn import FedDyn
from fedgeo.fl.strategy.fedntd import FedNTD, ntd_loss
from fedgeo.fl.strategy.fedopt import FedAdam, FedYogi
from fedgeo.fl.strategy.fedproto import FedProto
from fedgeo.fl.strategy.fedprox import FedProx
from fedgeo.fl.strategy.moon import Moon
from fedgeo.fl.strategy.scaffold import Scaffold
from fedgeo.fl.training import LocalOpts
from fedgeo.models import LinearModel

X = np.array([[1.0, 2.0], [-1.0, 0.5]], dtype=np.float32)
Y = np.array([0, 1])
W0 = {
    "body.weight": np.array([[0.1, -0.2], [0.3, 0.05]], np.float32),
    "body.bias": np.array([0.0, 0.1], np.float32),
}
LR = 0.5


def opts(epochs: int = 1) -> LocalOpts:
    return LocalOpts(epochs=epochs, batch_size=2, lr=LR, momentum=0.0, seed=0)


def grad(w: dict) -> dict:
    """Hand gradient of the mean cross-entropy of the linear model at ``w``."""
    z = X @ w["body.weight"].T + w["body.bias"]
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    e = (p - np.eye(2)[Y]) / len(Y)
    return {"body.weight": e.T @ X, "body.bias": e.sum(0)}


def step(w: dict, g: dict) -> dict:
    return {k: w[k] - LR * g[k] for k in w}


def model():
    return LinearModel().make(2, 2, seed=0)


def close(a: dict, b: dict) -> None:
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_fedavg_one_sgd_step_and_weighted_average() -> None:
    params, extras, state, m = FedAvg().client_update(model(), W0, X, Y, {}, {}, opts())
    close(params, step(W0, grad(W0)))
    assert m["steps"] == 1 and extras == {} and state == {}
    other = {k: v + 1 for k, v in W0.items()}
    new, _ = FedAvg().aggregate(W0, [ClientResult(W0, 3, {}), ClientResult(other, 1, {})], {}, 2)
    close(new, {k: v + 0.25 for k, v in W0.items()})


def test_fedprox_adds_the_proximal_gradient() -> None:
    mu = 0.7
    params, *_ = FedProx(mu=mu).client_update(model(), W0, X, Y, {}, {}, opts(epochs=2))
    w1 = step(W0, grad(W0))  # at the global model the proximal gradient is 0
    g1 = grad(w1)
    close(params, step(w1, {k: g1[k] + mu * (w1[k] - W0[k]) for k in W0}))


def test_scaffold_controls_evolve_on_client_and_server() -> None:
    s = Scaffold()
    server = s.init_server_state(W0)
    assert all(np.all(v == 0) for v in server.values())
    c = {f"c.{k}": np.full_like(v, 0.2) for k, v in W0.items()}
    params, extras, state, _ = s.client_update(model(), W0, X, Y, {}, c, opts())
    g = grad(W0)
    close(params, step(W0, {k: g[k] + 0.2 for k in W0}))  # g + c - c_i, c_i = 0
    # c_i+ = c_i - c + (x - y) / (K lr) = g with K = 1; the upload is dc = c_i+ - c_i = g.
    close({k[3:]: v for k, v in state.items()}, g)
    close({k[3:]: v for k, v in extras.items()}, g)
    new, server2 = s.aggregate(W0, [ClientResult(params, 2, extras)], c, num_clients=4)
    close(new, params)  # lr_global 1: the mean model
    close({k[2:]: v for k, v in server2.items()}, {k: 0.2 + 0.25 * g[k] for k in W0})  # c + |S|/N mean dc


def test_feddyn_gradient_state_and_server_state_evolve() -> None:
    a = 0.3
    s = FedDyn(alpha=a)
    gk = {f"g.{k}": np.full_like(v, 0.1) for k, v in W0.items()}
    params, _, state, _ = s.client_update(model(), W0, X, Y, gk, {}, opts())
    g = grad(W0)
    close(params, step(W0, {k: g[k] - 0.1 for k in W0}))  # dyn gradient: -g_k + a (w - w_g) = -g_k at w_g
    close({k[2:]: v for k, v in state.items()}, {k: 0.1 - a * (params[k] - W0[k]) for k in W0})
    other = {k: W0[k] + 1.0 for k in W0}
    new, h = s.aggregate(
        W0, [ClientResult(params, 1, {}), ClientResult(other, 1, {})], s.init_server_state(W0), 4
    )
    hh = {k: -a / 4 * ((params[k] - W0[k]) + 1.0) for k in W0}
    close({k[2:]: v for k, v in h.items()}, hh)
    close(new, {k: (params[k] + other[k]) / 2 - hh[k] / a for k in W0})


def test_moon_first_round_is_fedavg_and_keeps_the_local_model() -> None:
    params, _, state, _ = Moon().client_update(model(), W0, X, Y, {}, {}, opts())
    close(params, step(W0, grad(W0)))  # z_prev = z_glob: the contrastive gradient vanishes
    close({k[5:]: v for k, v in state.items()}, params)
    p2, *_ = Moon().client_update(model(), W0, X, Y, state, {}, opts(epochs=2))
    p2_avg, *_ = FedAvg().client_update(model(), W0, X, Y, {}, {}, opts(epochs=2))
    assert not np.allclose(p2["body.weight"], p2_avg["body.weight"])


def test_fedntd_loss_by_hand_and_first_step() -> None:
    logits = torch.tensor([[1.0, 2.0, 0.5], [0.2, 0.1, -1.0]])
    glob = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    y = torch.tensor([0, 2])
    tau = 2.0
    expect = 0.0
    for i, keep in enumerate(([1, 2], [0, 1])):
        q = torch.softmax(logits[i, keep] / tau, 0)
        qg = torch.softmax(glob[i, keep] / tau, 0)
        expect += float((qg * (qg.log() - q.log())).sum()) * tau**2 / 2
    assert float(ntd_loss(logits, glob, y, tau)) == pytest.approx(expect, rel=1e-6)
    params, *_ = FedNTD().client_update(model(), W0, X, Y, {}, {}, opts())
    close(params, step(W0, grad(W0)))  # local = global: KL and its gradient are 0


def test_fedproto_aggregates_class_prototypes_by_count() -> None:
    s = FedProto()
    p, extras, *_ = s.client_update(model(), W0, X, Y, {}, {}, opts())
    z = X @ p["body.weight"].T + p["body.bias"]  # linear model: representation = logits
    np.testing.assert_allclose(extras["proto_means"], z, rtol=1e-5)  # one sample per class
    e2 = {
        "proto_means": np.array([[1.0, 1.0], [0.0, 0.0]], np.float32),
        "proto_counts": np.array([3.0, 0.0], np.float32),
    }
    _, server = s.aggregate(W0, [ClientResult(p, 2, extras), ClientResult(p, 3, e2)], {}, 2)
    np.testing.assert_allclose(server["protos"][0], (z[0] + 3 * np.ones(2)) / 4, rtol=1e-5)
    np.testing.assert_allclose(server["protos"][1], z[1], rtol=1e-5)
    np.testing.assert_array_equal(server["proto_counts"], [4, 1])


@pytest.mark.parametrize("cls", [FedAdam, FedYogi])
def test_fedadam_and_fedyogi_server_step_by_hand(cls) -> None:
    """Reddi et al. (2021) Algorithm 2, one round from m = 0, v = tau^2, with the unweighted mean delta."""
    s = cls(eta=0.1, beta_1=0.9, beta_2=0.99, tau=0.01)
    w1 = {k: v + 0.2 for k, v in W0.items()}
    w2 = {k: v - 0.1 for k, v in W0.items()}
    params, *_ = s.client_update(model(), W0, X, Y, {}, {}, opts())
    close(params, step(W0, grad(W0)))  # the clients' update is FedAvg's
    state = s.init_server_state(W0)
    new, state = s.aggregate(W0, [ClientResult(w1, 1, {}), ClientResult(w2, 9, {})], state, 2)
    delta = 0.05  # (0.2 - 0.1) / 2: example counts do not weigh
    m = 0.1 * delta
    if cls is FedAdam:
        v = 0.99 * 1e-4 + 0.01 * delta**2
    else:  # Yogi: v - (1 - beta_2) d^2 sign(v - d^2), and v = tau^2 < d^2
        v = 1e-4 + 0.01 * delta**2
    close(new, {k: x + 0.1 * m / (np.sqrt(v) + 0.01) for k, x in W0.items()})
    for k in W0:
        np.testing.assert_allclose(state[f"m.{k}"], m)
        np.testing.assert_allclose(state[f"v.{k}"], v)
    # Round 2 with no change (delta = 0): the momentum alone still moves the model.
    new2, _ = s.aggregate(new, [ClientResult(new, 1, {})], state, 2)
    v2 = 0.99 * v if cls is FedAdam else v
    close(new2, {k: new[k] + 0.1 * 0.9 * m / (np.sqrt(v2) + 0.01) for k in W0})
