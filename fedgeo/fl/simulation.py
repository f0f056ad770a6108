"""Running a ServerApp with its ClientApps: in this process (``inprocess``) or on Flower's Ray engine.

``InProcessGrid`` is a Flower ``Grid`` that hands each message to the ``ClientApp`` of its node in this
process, one after another, with one persistent ``Context`` per node (as a SuperNode keeps it). A client
that raises gives an error reply (Flower's own behaviour), and the strategy goes on with the others.
``run_ray`` uses ``flwr.simulation.run_simulation`` (one Ray actor per ``num_cpus``) under a watchdog, so
a stuck simulation fails with a message instead of hanging.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Iterable
from itertools import count

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from common.errors import SuiteError

_IDS = count(1)


class InProcessGrid(Grid):
    """A ``Grid`` over ``num_nodes`` in-process nodes (node ids 1..K, ``partition-id`` 0..K-1)."""

    def __init__(self, client_app: ClientApp, num_nodes: int, run_id: int = 1) -> None:
        self.client_app = client_app
        self.nodes = list(range(1, num_nodes + 1))
        self.contexts = {
            n: Context(run_id, n, {"partition-id": n - 1, "num-partitions": num_nodes}, RecordDict(), {})
            for n in self.nodes
        }
        self._run = None
        self._inbox: dict[str, Message] = {}

    def set_run(self, run) -> None:  # noqa: ANN001 - flwr's Run
        self._run = run

    @property
    def run(self):  # noqa: ANN201
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:  # fmt: skip
        return Message(
            content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id, ttl=ttl
        )

    def get_node_ids(self) -> Iterable[int]:
        return list(self.nodes)

    def _deliver(self, msg: Message) -> Message:
        msg.metadata.__dict__["_message_id"] = f"m{next(_IDS)}"
        node = msg.metadata.dst_node_id
        try:
            reply = self.client_app(msg, self.contexts[node])
        except Exception as exc:  # noqa: BLE001 - a failing client is reported, not fatal
            reason = f"{type(exc).__name__}: {exc} | {traceback.format_exc(limit=2).splitlines()[-1]}"
            reply = Message(Error(code=1, reason=reason), reply_to=msg)
        reply.metadata.__dict__["_src_node_id"] = node
        return reply

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for m in messages:
            reply = self._deliver(m)
            ids.append(reply.metadata.reply_to_message_id)
            self._inbox[ids[-1]] = reply
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._inbox.pop(i) for i in message_ids if i in self._inbox]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return [self._deliver(m) for m in messages]


def run_inprocess(server_app: ServerApp, client_app: ClientApp, num_nodes: int) -> None:
    """Run ``server_app``'s main with an ``InProcessGrid``."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1  # what a SuperLink would set
    grid = InProcessGrid(client_app, num_nodes)
    context = Context(1, 0, {}, RecordDict(), {})
    server_app(grid, context)


def run_ray(server_app: ServerApp, client_app: ClientApp, num_nodes: int, num_cpus: int, limit_s: float,
            done: threading.Event) -> None:  # fmt: skip
    """Flower's simulation engine (Ray backend), ``num_cpus`` per client, failing after ``limit_s`` seconds
    unless ``done`` (set by the server app at its end) is set by then."""
    from flwr.simulation import run_simulation

    errors: list[BaseException] = []

    def target() -> None:
        try:
            run_simulation(
                server_app=server_app,
                client_app=client_app,
                num_supernodes=num_nodes,
                backend_config={"client_resources": {"num_cpus": num_cpus, "num_gpus": 0.0},
                                "init_args": {"include_dashboard": False, "log_to_driver": False}},
            )  # fmt: skip
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    t0 = time.perf_counter()
    th = threading.Thread(target=target, daemon=True, name="flwr-simulation")
    th.start()
    th.join(limit_s)
    if th.is_alive():
        raise SuiteError(
            f"fl.backend=ray: the simulation did not finish within {limit_s:g} s (fl.timeout_s); stopped"
        )
    if errors:
        raise SuiteError(f"fl.backend=ray: the simulation failed: {errors[0]}")
    if not done.is_set():
        raise SuiteError(
            f"fl.backend=ray: the server app ended without finishing ({time.perf_counter() - t0:.1f} s); see the log above"
        )
