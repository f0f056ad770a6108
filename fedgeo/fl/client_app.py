"""The federation's ``ClientApp`` (Flower Message API): data preparation queries and the train handler.

Messages a client answers:

- ``query.norm``: its per-dimension feature statistics for the normaliser (``fedgeo.normalize``).
- ``query.ggeur``: GGEUR's upload (class counts, means, packed covariances, optional per-domain prototypes)
  of its normalised data.
- ``query.prepare``: the fitted normaliser and the server's GGEUR reply; the client builds its training set
  once (normalised, augmented) and keeps it in a file next to its data (``client_<k>.prepared.npz``).
- ``train``: the global parameters (and the strategy's payload); it runs the strategy's client update and
  replies with parameters, ``num-examples`` and the strategy's extras. Per-client state (SCAFFOLD's
  control, FedDyn's gradient, MOON's previous model) lives in Flower's ``context.state``, and (with
  ``fl.checkpoint``) in ``client_<k>.state_<round>.npz`` next to its data, from which a resumed run's
  fresh node takes it (``fedgeo.fl.checkpoint``). Injected faults (``fl.faults``) act here first.

A client finds its data as ``client_<partition-id>.npz`` in ``data-dir`` (node config, or the setup's).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from common.atomic import atomic_savez
from common.seeding import derive_seed
from common.threads import limit_threads
from fedgeo.augment import ClientData
from fedgeo.fl.checkpoint import load_client_state, save_client_state
from fedgeo.fl.faults import inject
from fedgeo.fl.lr_search import candidate_losses
from fedgeo.fl.records import from_record, to_record
from fedgeo.fl.setup import Setup
from fedgeo.fl.training import LocalOpts, mean_loss, set_params
from fedgeo.normalize import Normalizer, norm_stats

_CACHE: dict[str, ClientData] = {}


def client_file(data_dir: str | Path, k: int, prepared: bool = False) -> Path:
    return Path(data_dir) / (f"client_{k}.prepared.npz" if prepared else f"client_{k}.npz")


def save_client(path: Path, data: ClientData) -> None:
    atomic_savez(path, compressed=False, X=data.features, y=data.labels, domains=data.domains)


def load_client(path: Path) -> ClientData:
    """A client's set, cached per process by path (a prepared set is read once per worker)."""
    key = str(path)
    if key not in _CACHE:
        with np.load(path) as z:
            _CACHE[key] = ClientData(z["X"], z["y"].astype(np.int64), z["domains"].astype(np.int64))
    return _CACHE[key]


def _where(context: Context, setup: Setup) -> tuple[int, str]:
    k = int(context.node_config.get("partition-id", 0))
    return k, str(context.node_config.get("data-dir", setup.data_dir))


def _normalizer(content: RecordDict, kind: str) -> Normalizer:
    arrays = from_record(content["norm"]) if "norm" in content else {}
    return Normalizer(kind, arrays.get("mean"), arrays.get("scale"))


def _reply(msg: Message, **records: Any) -> Message:
    return Message(RecordDict(records), reply_to=msg)


def _normalized_client(msg: Message, setup: Setup, data_dir: str, k: int) -> ClientData:
    """Client ``k``'s raw data, normalised by the rule the server sent in ``msg``."""
    raw = load_client(client_file(data_dir, k))
    return ClientData(_normalizer(msg.content, setup.normalize)(raw.features), raw.labels, raw.domains)


def local_opts(setup: Setup, lr: float, seed: int) -> LocalOpts:
    """The run's local SGD settings (budget ``fl.local_budget``, batch, momentum) at ``lr``, batch order
    ``seed``."""
    fl = setup.fl
    return LocalOpts(fl.local_epochs, setup.train.batch_size, lr, fl.momentum, seed, fl.steps_per_round)


def train_opts(setup: Setup, k: int, msg: Message) -> LocalOpts:
    """Client ``k``'s local SGD settings for the round of ``msg``: the run's budget (``fl.local_budget``)
    and the learning rate the server sent (``lr``, after a search) or ``fl.lr``."""
    config = msg.content["config"]
    lr = float(config["lr"]) if "lr" in config else setup.fl.lr
    return local_opts(setup, lr, derive_seed(setup.seed, "local", k, int(config["server-round"])))


def search_on_client(setup: Setup, k: int, data: ClientData, msg: Message) -> tuple[np.ndarray, int]:
    """Client ``k``'s held-out losses ``[L]`` for the candidates of ``fl.lr_candidates``, from the initial
    global parameters in ``msg`` (``fedgeo.fl.lr_search``)."""
    opts = local_opts(setup, setup.fl.lr, 0)  # lr and seed are replaced per candidate and round
    return candidate_losses(
        lambda: setup.model.make(setup.dim, setup.num_classes, seed=0), from_record(msg.content["arrays"]),
        data.features, data.labels, setup.fl.lr_candidates, opts, setup.fl.lr_search_rounds,
        derive_seed(setup.seed, "lrsearch", k),
    )  # fmt: skip


def _client_state(context: Context, setup: Setup, data_dir: str, k: int, rnd: int) -> dict[str, np.ndarray]:
    """The client's strategy state: its node's, else (a resumed run's fresh node) its newest saved one."""
    if "strategy" in context.state:
        return from_record(context.state["strategy"])
    return load_client_state(Path(data_dir), k, rnd) if setup.fl.checkpoint else {}


def _train(setup: Setup, msg: Message, context: Context) -> Message:
    """One local update of client ``context``'s node on its prepared data; the reply carries the parameters,
    the strategy's extras and the metrics (``num-examples`` by ``fl.weight_by``)."""
    k, data_dir = _where(context, setup)
    prepared = context.state["prepared"]["path"] if "prepared" in context.state else None
    data = load_client(Path(str(prepared)) if prepared else client_file(data_dir, k, prepared=True))
    rnd = int(msg.content["config"]["server-round"])
    inject(setup.fl.fault_list, k, rnd)
    state = _client_state(context, setup, data_dir, k, rnd)
    payload = from_record(msg.content["payload"]) if "payload" in msg.content else {}
    model = setup.model.make(setup.dim, setup.num_classes, seed=0)
    global_params = from_record(msg.content["arrays"])
    loss_start = mean_loss(set_params(model, global_params), data.features, data.labels)
    params, extras, new_state, metrics = setup.strategy.client_update(
        model, global_params, data.features, data.labels, state, payload, train_opts(setup, k, msg)
    )
    context.state["strategy"] = to_record(new_state)
    weight = data.size if setup.fl.weight_by == "augmented" else load_client(client_file(data_dir, k)).size
    if setup.fl.checkpoint and new_state:
        save_client_state(Path(data_dir), k, rnd, new_state)
    out: dict[str, Any] = {
        "arrays": to_record(params),
        "metrics": MetricRecord(
            {
                "num-examples": weight,
                "train_loss": metrics["loss"],
                "loss_start": loss_start,
                "local_steps": int(metrics["steps"]),
                "n_train": data.size,
            }
        ),  # fmt: skip
    }
    if extras:
        out["extras"] = to_record(extras)
    return _reply(msg, **out)


def make_client_app(setup_of: Setup | Callable[[Context], Setup]) -> ClientApp:
    """The ``ClientApp`` of a run with a ``Setup``, or with a function that builds it from the node's
    ``Context`` (a deployed SuperNode: ``fedgeo.fl.app``, from the run's ``run_config``).

    Flower registers message handlers as closures decorated on the app object: each handler here is a few
    lines that call the module's functions (``train``: ``_train``).
    """
    app = ClientApp()

    def get(context: Context) -> Setup:
        return setup_of if isinstance(setup_of, Setup) else setup_of(context)

    @app.query("norm")
    def norm(msg: Message, context: Context) -> Message:
        limit_threads()
        setup = get(context)
        k, data_dir = _where(context, setup)
        st = norm_stats(setup.normalize, load_client(client_file(data_dir, k)).features)
        arrays = {"count": np.array([st.count], dtype=np.int64), "mean": st.mean, "m2": st.m2}
        return _reply(msg, stats=to_record(arrays))

    @app.query("ggeur")
    def ggeur(msg: Message, context: Context) -> Message:
        limit_threads()
        setup = get(context)
        k, data_dir = _where(context, setup)
        data = _normalized_client(msg, setup, data_dir, k)
        up = setup.augment.client_upload(data, setup.num_classes, setup.num_domains)
        return _reply(msg, upload=to_record(up))

    @app.query("prepare")
    def prepare(msg: Message, context: Context) -> Message:
        limit_threads()
        setup = get(context)
        k, data_dir = _where(context, setup)
        data = _normalized_client(msg, setup, data_dir, k)
        n_raw = data.size
        if setup.augment.enabled:
            rng = np.random.default_rng(derive_seed(setup.seed, "ggeur", k))
            data = setup.augment.client_augment(data, from_record(msg.content["reply"]), rng)
        path = client_file(data_dir, k, prepared=True)
        save_client(path, data)
        _CACHE.pop(str(path), None)
        context.state["prepared"] = ConfigRecord({"path": str(path)})
        return _reply(msg, metrics=MetricRecord({"n_train": data.size, "n_raw": n_raw}))

    @app.query("lrsearch")
    def lrsearch(msg: Message, context: Context) -> Message:
        limit_threads()
        setup = get(context)
        k, data_dir = _where(context, setup)
        losses, n = search_on_client(setup, k, load_client(client_file(data_dir, k, prepared=True)), msg)
        return _reply(msg, scores=to_record({"losses": losses, "n": np.array([n], dtype=np.int64)}))

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        limit_threads()
        return _train(get(context), msg, context)

    return app
