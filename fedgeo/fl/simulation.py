"""Running a ServerApp with its ClientApps: in this process (``inprocess``) or on Flower's Ray engine.

``InProcessGrid`` is a Flower ``Grid`` that hands each message to the ``ClientApp`` of its node in this
process, one after another, with one persistent ``Context`` per node (as a SuperNode keeps it). A client
that raises gives an error reply (Flower's own behaviour), and the strategy goes on with the others; a
client that does not answer within the reply timeout is left behind (its thread abandoned) and its
reply is missing, as on a real grid.

Both backends run under a watchdog (``watch``): the run succeeds as soon as the server app says it is
done (``done``), whatever the engine is still doing, and fails with one message when it is not done
within its limit (``fl.timeout_s x (rounds + 2)``); the engine is then stopped so that the process exits.
"""

from __future__ import annotations

import contextlib
import threading
import time
import traceback
from collections.abc import Callable, Iterable
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

    def _deliver_within(self, msg: Message, timeout: float | None) -> Message | None:
        """``_deliver`` in a worker thread; ``None`` when it has not answered within ``timeout`` seconds."""
        box: list[Message] = []
        th = threading.Thread(target=lambda: box.append(self._deliver(msg)), daemon=True, name="fl-client")
        th.start()
        th.join(timeout)
        return box[0] if box else None

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
        """Each message's reply, clients one after another, each given at most ``timeout`` seconds; a
        client that has not answered by then has no reply in the list."""
        replies = (self._deliver_within(m, timeout) for m in messages)
        return [r for r in replies if r is not None]


def watch(target: Callable[[], None], limit_s: float, done: threading.Event, what: str,
          stop: Callable[[], None] | None = None, grace_s: float = 5.0) -> None:  # fmt: skip
    """Run ``target`` in a daemon thread until ``done`` is set or ``target`` returns.

    Success as soon as ``done`` is set (the engine gets ``grace_s`` to shut down, then is stopped by ``stop``);
    ``SuiteError`` when ``target`` raised or returned without ``done``, or ``limit_s`` seconds passed
    (then ``stop`` is called, so that the process can exit).
    """
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    t0 = time.monotonic()
    th = threading.Thread(target=run, daemon=True, name=f"fl-{what}")
    th.start()
    while not done.wait(0.2) and th.is_alive() and time.monotonic() - t0 < limit_s:
        pass
    if done.is_set():
        th.join(min(grace_s, limit_s))  # let the engine shut down; a finished run stands either way
        if th.is_alive() and stop is not None:
            stop()  # a client still stuck (a hung actor) would keep the process from exiting
            th.join(10.0)
        return
    if th.is_alive():
        if stop is not None:
            stop()
        raise SuiteError(
            f"fl.backend={what}: the run did not finish within {limit_s:g} s (fl.timeout_s); stopped"
        )
    if errors:
        raise SuiteError(f"fl.backend={what}: the simulation failed: {errors[0]}")
    raise SuiteError(
        f"fl.backend={what}: the server app ended without finishing ({time.monotonic() - t0:.1f} s)"
    )


def run_inprocess(server_app: ServerApp, client_app: ClientApp, num_nodes: int, limit_s: float,
                  done: threading.Event) -> None:  # fmt: skip
    """Run ``server_app``'s main with an ``InProcessGrid`` under ``watch`` (``limit_s`` seconds)."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1  # what a SuperLink would set
    grid = InProcessGrid(client_app, num_nodes)
    context = Context(1, 0, {}, RecordDict(), {})
    watch(lambda: server_app(grid, context), limit_s, done, "inprocess")


def run_ray(server_app: ServerApp, client_app: ClientApp, num_nodes: int, num_cpus: int, limit_s: float,
            done: threading.Event) -> None:  # fmt: skip
    """Flower's simulation engine (Ray backend), ``num_cpus`` per client, under ``watch``: done when the
    server app sets ``done``, failed after ``limit_s`` seconds (Ray is then shut down)."""
    from flwr.simulation import run_simulation

    def target() -> None:
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=num_nodes,
            backend_config={"client_resources": {"num_cpus": num_cpus, "num_gpus": 0.0},
                            "init_args": {"include_dashboard": False, "log_to_driver": False}},
        )  # fmt: skip

    before = set(threading.enumerate())
    watch(target, limit_s, done, "ray", stop=lambda: _stop_ray(before))


def _stop_ray(before: set[threading.Thread]) -> None:
    """Shut Ray down and let the process exit past Flower's worker threads still blocked on a stuck actor.

    Flower's Ray engine waits for each client's result in a ``ThreadPoolExecutor`` worker; one waiting on a
    hung actor never returns (not even after ``ray.shutdown``), and ``concurrent.futures`` joins every
    worker at interpreter exit, so the process would never end. The workers started by this simulation
    (threads not in ``before``) that are still alive are taken off that exit-time join list.
    """
    import concurrent.futures.thread as cft

    import ray

    with contextlib.suppress(Exception):
        ray.shutdown()
    stuck = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    for t in stuck:
        cft._threads_queues.pop(t, None)  # noqa: SLF001 - the only handle on the exit-time join
