"""``python -m runners.fed_deploy [runners.fed overrides]``: one ``mode=fl`` run on Flower's Deployment Runtime.

The same Flower App as ``runners.fed mode=fl`` (``fedgeo.fl``: its components ``fedgeo.fl.app:server_app``
and ``fedgeo.fl.app:client_app``), but every party is its own process talking over Flower's network stack,
here all on loopback (127.0.0.1):

1. the run's data: each client's raw set ``client_<k>.npz`` and the test set ``test.npz`` in the run's
   ``deploy/`` folder; the run's settings as Flower run-config values (``fedgeo.fl.app.run_config``) in
   ``run_config.toml``;
2. ``flower-superlink --insecure --host 127.0.0.1 --port P --disable-runtime-dependency-installation``;
3. one ``flower-supernode --insecure --superlink 127.0.0.1:P --host 127.0.0.1 --port Q_k
   --node-config "partition-id=k num-partitions=K data-dir='<deploy>'"`` per client (its own partition);
4. ``flwr run flower_app deploy --run-config <deploy>/run_config.toml --stream`` with ``FLWR_HOME`` set to
   ``<deploy>/flwr_home``, whose ``config.toml`` names the SuperLink connection ``deploy``
   (``address = "127.0.0.1:P"``, ``insecure = true``). ``flower_app/`` is the Flower App (its
   ``pyproject.toml`` names the components and declares the run-config keys).

The ServerApp writes its per-round results (and reply counts, and the error that stopped it, if one did)
to ``result.json`` in the deploy folder, and a checkpoint per round (``checkpoint.npz``, from which
``resume=true`` continues); the runner turns them into the usual record. A SuperNode that dies or hangs
does not end the run: its missing replies are counted as timed out. Everything is bounded by
``fl.timeout_s x (rounds + 2)`` seconds, and every process started here, with all its descendants, is
stopped at the end (``psutil``), also on error.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import psutil
import tomli_w
from omegaconf import DictConfig

from common.atomic import atomic_write_text
from common.errors import SuiteError
from common.experiment import RunContext, RunOutput
from common.threads import limit_threads
from fedgeo.augment import ClientData
from fedgeo.fl.app import RESULT_FILE, TEST_FILE, run_config
from fedgeo.fl.client_app import client_file, save_client
from fedgeo.fl.faults import check_clients
from fedgeo.fl.loop import CheckpointPlan
from fedgeo.fl.run import summarize, warn_if_not_converged
from fedgeo.fl.sink import RunSink
from runners.fed import build_parts, checkpoint_plan, label_resume
from runners.hydra_entry import CONF_DIR, hydra_cli, run_from_hydra

REPO = Path(__file__).resolve().parent.parent
APP_DIR = REPO / "flower_app"
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def commands(work: Path, num_clients: int, link_port: int, node_ports: list[int]) -> dict[str, list[str]]:
    """The exact command lines of a loopback deployment (SuperLink, SuperNodes, ``flwr run``)."""
    bindir = Path(sys.executable).parent
    cmds = {
        "superlink": [str(bindir / "flower-superlink"), "--insecure", "--host", HOST, "--port", str(link_port),
                      "--disable-runtime-dependency-installation"],
        "run": [str(bindir / "flwr"), "run", str(APP_DIR), "deploy", "--run-config",
                str(work / "run_config.toml"), "--stream"],
    }  # fmt: skip
    for k in range(num_clients):
        node_config = f"partition-id={k} num-partitions={num_clients} data-dir='{work}'"
        cmds[f"supernode{k}"] = [
            str(bindir / "flower-supernode"), "--insecure", "--superlink", f"{HOST}:{link_port}",
            "--host", HOST, "--port", str(node_ports[k]), "--node-config", node_config,
        ]  # fmt: skip
    return cmds


def write_inputs(parts: dict[str, Any], cfg: dict[str, Any], seed: int, work: Path, link_port: int,
                 plan: CheckpointPlan | None = None) -> None:  # fmt: skip
    """Clients' raw sets, the test set, the run config (``fedgeo.fl.app.run_config``, with the checkpoint
    ``plan``) and the Flower CLI config."""
    work.mkdir(parents=True, exist_ok=True)
    for k, c in enumerate(parts["clients"]):
        save_client(client_file(work, k), c)
    test = parts["test"]
    save_client(work / TEST_FILE, ClientData(test.features, test.labels, test.domains))
    values = run_config(
        cfg, partition_method=parts["partition_method"], normalize=parts["normalize"], test=test, seed=seed,
        num_clients=len(parts["clients"]), work=work, plan=plan,
    )  # fmt: skip
    atomic_write_text(work / "run_config.toml", tomli_w.dumps(values))
    home = work / "flwr_home"
    home.mkdir(exist_ok=True)
    conn = {
        "superlink": {"default": "deploy", "deploy": {"address": f"{HOST}:{link_port}", "insecure": True}}
    }
    atomic_write_text(home / "config.toml", tomli_w.dumps(conn))


def run_deployment(work: Path, num_clients: int, link_port: int, limit_s: float, log: Any) -> dict[str, Any]:
    """Start the SuperLink and SuperNodes, ``flwr run`` the app, wait for ``result.json`` (at most
    ``limit_s`` seconds); every process started here is killed at the end. Returns the server's results."""
    cmds = commands(work, num_clients, link_port, [free_port() for _ in range(num_clients)])
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
           "FLWR_HOME": str(work / "flwr_home"), "FLWR_TELEMETRY_ENABLED": "0",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}  # fmt: skip
    procs: dict[str, subprocess.Popen] = {}
    deadline = time.monotonic() + limit_s

    def start(name: str, cwd: Path) -> None:
        log.info(f"deploy: {' '.join(cmds[name])}")
        with (work / f"{name}.log").open("wb") as f:
            procs[name] = subprocess.Popen(cmds[name], env=env, stdout=f, stderr=subprocess.STDOUT,
                                           start_new_session=True, cwd=cwd)  # fmt: skip

    try:
        start("superlink", work)
        wait_for_port(link_port, deadline, procs["superlink"])
        for k in range(num_clients):
            start(f"supernode{k}", work)
        start("run", REPO)
        return wait_for_result(work, procs, deadline, limit_s)
    finally:
        _kill(list(procs.values()))


def wait_for_port(port: int, deadline: float, proc: subprocess.Popen) -> None:
    """Until something accepts connections on ``127.0.0.1:port`` (the SuperLink's HTTP API)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            if s.connect_ex((HOST, port)) == 0:
                return
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SuiteError(f"deploy: the SuperLink did not start listening on {HOST}:{port}")
        time.sleep(0.2)


def wait_for_result(work: Path, procs: dict[str, subprocess.Popen], deadline: float, limit_s: float) -> dict:
    """The ServerApp's ``result.json``; ``SuiteError`` when the SuperLink or ``flwr run`` exits early or
    time runs out. A SuperNode that exits is not fatal: its missing replies are counted (timed out) and
    the run goes on with the others as far as ``fl.min_reply_fraction`` allows."""
    result, run_done = work / RESULT_FILE, None
    while not result.exists():
        dead = [n for n in ("superlink",) if procs[n].poll() is not None]
        rc = procs["run"].poll()
        if rc is not None and run_done is None:
            run_done = time.monotonic()
        late = run_done is not None and (rc != 0 or time.monotonic() - run_done > 30)
        if dead or late or time.monotonic() > deadline:
            why = (
                f"{dead} exited"
                if dead
                else f"flwr run exited ({rc})"
                if late
                else f"no result in {limit_s:g} s"
            )
            raise SuiteError(f"deploy: {why}; logs in {work}: {_tail(work / 'run.log')}")
        time.sleep(0.5)
    return json.loads(result.read_text())


def _tail(path: Path, n: int = 400) -> str:
    return path.read_text(errors="replace")[-n:].replace("\n", " | ") if path.exists() else ""


def _kill(procs: list[subprocess.Popen]) -> None:
    """Stop every process started here and all their descendants (also those Flower detached into new
    sessions): SIGTERM, then SIGKILL to whatever is left after 5 s."""
    tree: list[psutil.Process] = []
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(p.pid)
            tree += [root, *root.children(recursive=True)]
    for proc in tree:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            proc.terminate()
    _, alive = psutil.wait_procs(tree, timeout=5.0)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            proc.kill()
    psutil.wait_procs(alive, timeout=5.0)
    for p in procs:
        p.poll()  # reap our direct children


def body(ctx: RunContext) -> RunOutput:
    limit_threads()
    if ctx.config.get("mode") != "fl":
        raise SuiteError("runners.fed_deploy runs mode=fl only")
    parts = build_parts(ctx)
    fl = parts["fl"]
    check_clients(fl.fault_list, len(parts["clients"]))
    work = ctx.artifact("deploy")
    plan, source = checkpoint_plan(ctx, fl, work)
    link_port = free_port()
    write_inputs(parts, ctx.config, ctx.seed, work, link_port, plan)
    limit = fl.timeout_s * (fl.rounds + 2)
    t0 = time.perf_counter()
    res = run_deployment(work, len(parts["clients"]), link_port, limit, ctx.log)
    sink = RunSink.from_report(res)
    for f in sink.failures:
        ctx.logger.event("client_failure", detail=f)
    for c in sink.counts:
        ctx.logger.event("replies", **c)
    if res["error"]:
        raise SuiteError(res["error"])
    for r in sink.rounds:
        ctx.logger.log({k: r[k] for k in ("acc", "acc_domain_avg", "loss")}, int(r["round"]), "round")
    out = label_resume(summarize(sink, parts["test"].domain_names, fl), source)
    warn_if_not_converged(out, fl, ctx.logger)
    out.metrics |= {"fl_wall_s": time.perf_counter() - t0, "num_clients": float(len(parts["clients"])),
                    "multi_domain": float(bool(getattr(parts["augment"], "multi_domain", False)))}  # fmt: skip
    return out


@hydra.main(config_path=CONF_DIR, config_name="fed", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_from_hydra(cfg, "fed", body)


if __name__ == "__main__":
    limit_threads()
    hydra_cli(main)
