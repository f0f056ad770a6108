"""The federation as a Flower App: ``server_app`` and ``client_app``, and the run config that carries their
settings (Flower's Deployment Runtime: ``flwr run flower_app <connection> --run-config <file>``).

The app is laid out as Flower's baselines are, one job per module:

- ``fedgeo.fl.client_app``: the ClientApp's message handlers (``make_client_app``);
- ``fedgeo.fl.server_app``: the ServerApp's rounds (``make_server_app``; ``serve``, a whole run on a grid);
- ``fedgeo.fl.flower_strategy``: the Flower strategy that carries ours (``SuiteStrategy``);
- ``fedgeo.fl.setup``: the settings every party needs (``Setup``);
- this module: the deployed components, wired from the run's ``run_config``.

``flower_app/pyproject.toml`` names ``fedgeo.fl.app:server_app`` and ``fedgeo.fl.app:client_app`` as its
components and declares every key of ``RUN_CONFIG`` (Flower accepts no undeclared key);
``runners.fed_deploy`` writes a run's values (``run_config``) to a TOML file for ``flwr run --run-config``.
Run-config values are scalars, so each option node (``strategy``, ``model``, ``augment``, ``train``,
``fl``, which can hold lists) travels as JSON text, exactly as Hydra composed it. The in-process and Ray
backends (``fedgeo.fl.run``) build the same apps from a ``Setup`` directly.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from common.atomic import atomic_write_text
from common.config import build
from common.errors import ConfigError, SuiteError
from common.threads import limit_threads
from fedgeo.data import EmbeddingDataset
from fedgeo.fl.client_app import load_client, make_client_app
from fedgeo.fl.loop import CheckpointPlan
from fedgeo.fl.server_app import serve, wait_for_nodes
from fedgeo.fl.setup import Setup
from fedgeo.fl.sink import RunSink
from fedgeo.models import ClassifierModel

OPTIONS = ("strategy", "model", "augment", "train", "fl")  # option nodes, JSON text in the run config
TEST_FILE, RESULT_FILE = "test.npz", "result.json"  # in the run's folder

# Every run-config key with its declared (empty) default, as flower_app/pyproject.toml declares them.
RUN_CONFIG: dict[str, str | int] = {
    **dict.fromkeys(OPTIONS, ""),
    "partition-method": "",  # the partition's method (the augmenter is resolved for it)
    "normalize": "",  # the feature normaliser's kind
    "num-classes": 0,
    "num-domains": 0,
    "dim": 0,
    "seed": 0,
    "domain-names": "",  # JSON list of the test set's domain names
    "num-clients": 0,  # nodes the server waits for
    "test-file": "",  # the global test set (npz: X, y, domains)
    "result-file": "",  # where the server writes its records (RunSink.report and error)
    "checkpoint-file": "",  # the server's per-round checkpoint; empty = none
    "checkpoint-key": "",
}


def run_config(
    options: Mapping[str, Any],
    *,
    partition_method: str,
    normalize: str,
    test: EmbeddingDataset,
    seed: int,
    num_clients: int,
    work: Path,
    plan: CheckpointPlan | None,
) -> dict[str, str | int]:
    """A run's run-config values: the option nodes of ``options`` (the run's plain config), the data's
    facts, and its files in ``work`` (``TEST_FILE``, ``RESULT_FILE``, ``plan``'s checkpoint)."""
    return {
        **{k: json.dumps(options[k]) for k in OPTIONS},
        "partition-method": partition_method, "normalize": normalize, "num-classes": test.num_classes,
        "num-domains": test.num_domains, "dim": test.dim, "seed": seed,
        "domain-names": json.dumps(list(test.domain_names)), "num-clients": num_clients,
        "test-file": str(work / TEST_FILE), "result-file": str(work / RESULT_FILE),
        "checkpoint-file": plan.path if plan else "", "checkpoint-key": plan.key if plan else "",
    }  # fmt: skip


def setup_from_run_config(rc: Mapping[str, Any], data_dir: str) -> Setup:
    """The run's ``Setup`` built from its run config ``rc`` (clients' sets in ``data_dir``)."""
    node = {k: json.loads(str(rc[k])) for k in OPTIONS}
    model = build(node["model"], "model")
    if not isinstance(model, ClassifierModel):
        raise ConfigError("model", f"expected a classifier on embeddings, got {type(model).__name__}")
    augment = build(node["augment"], "augment").resolve(str(rc["partition-method"]))
    return Setup(
        build(node["strategy"], "strategy"), model, augment, build(node["train"], "train"),
        build(node["fl"], "fl"), str(rc["normalize"]), int(rc["num-classes"]), int(rc["num-domains"]),
        int(rc["dim"]), int(rc["seed"]), data_dir,
    )  # fmt: skip


@lru_cache(maxsize=4)
def _client_setup(items: tuple[tuple[str, Any], ...], data_dir: str) -> Setup:
    return setup_from_run_config(dict(items), data_dir)


def node_setup(context: Context) -> Setup:
    """A SuperNode's ``Setup``: the run config's, with the node's ``data-dir`` (built once per run)."""
    items = tuple(sorted(context.run_config.items()))
    return _client_setup(items, str(context.node_config.get("data-dir", "")))


client_app = make_client_app(node_setup)
server_app = ServerApp()


@server_app.main()
def server_main(grid: Grid, context: Context) -> None:
    """The deployed server: wait for the run's nodes, ``serve``, write the records (``RunSink.report``
    and the error that stopped the run, if one did) to the run config's ``result-file``."""
    limit_threads()
    rc = context.run_config
    setup = setup_from_run_config(rc, "")
    wait_for_nodes(grid, int(rc["num-clients"]), setup.fl.timeout_s)
    test = load_client(Path(str(rc["test-file"])))
    ckpt = str(rc["checkpoint-file"])
    plan = CheckpointPlan(ckpt, str(rc["checkpoint-key"])) if ckpt else None
    sink, error = RunSink(), None
    try:
        serve(grid, setup, test, tuple(json.loads(str(rc["domain-names"]))), sink, plan)
    except SuiteError as exc:  # e.g. fl.on_degraded=fail: the runner prints it as the run's error line
        error = str(exc)
    atomic_write_text(str(rc["result-file"]), json.dumps({**sink.report(), "error": error}))
