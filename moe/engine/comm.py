"""Process groups, the uneven all-to-all, phase clocks and failure forwarding.

Every process group is made with a timeout (``engine.timeout_s``): a collective that waits longer raises on
every rank instead of hanging. A rank whose own code raises writes its message to the group's store
(``report_failure``) and leaves; its peers' collectives then fail at once (closed connections), and rank 0
prints that message as the run's one error line (``failure_message``).
"""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from common.errors import ConfigError, SuiteError
from moe.engine.spec import EngineOptions

T = TypeVar("T")

ERROR_KEY = "moe_engine/error"
_COLLECTIVE_HINTS = ("gloo", "nccl", "connection", "timed out", "timeout", "closed by peer", "read error")


@dataclass(frozen=True)
class DistContext:
    """This process's place in the engine: rank, world size, backend, device, dtype, node count."""

    rank: int
    world_size: int
    local_rank: int
    num_nodes: int
    backend: str
    device: torch.device
    dtype: torch.dtype

    @property
    def device_name(self) -> str:
        """``cpu`` or the CUDA device's product name."""
        if self.device.type == "cuda":
            return torch.cuda.get_device_name(self.device)
        return "cpu"


def resolve_backend(
    opts: EngineOptions, cuda: bool, gpus: int | None = None, local_world: int = 1
) -> tuple[str, torch.device, torch.dtype]:
    """(backend, device, dtype) from the options, whether CUDA is present, the GPUs per node (``gpus``) and
    the ranks per node (``local_world``); ``ConfigError`` when impossible.

    With gloo on CUDA, local rank r uses GPU ``r % gpus``: several ranks may share one GPU (the one-GPU
    multi-rank mode, CUDA tensors over gloo). NCCL needs one GPU per rank and is refused in one line otherwise.
    """
    want_cuda = opts.device == "cuda" or (opts.device == "auto" and cuda and opts.backend != "gloo")
    if want_cuda and not cuda:
        raise ConfigError("engine.device", "cuda was asked for but no CUDA GPU is available here")
    backend = opts.backend if opts.backend != "auto" else ("nccl" if want_cuda else "gloo")
    if backend == "nccl" and not want_cuda:
        raise ConfigError(
            "engine.backend",
            "nccl needs CUDA GPUs (engine.device=cuda); none is used here: use engine.backend=gloo",
        )
    gpus = gpus if gpus is not None else (torch.cuda.device_count() if cuda else 0)
    if backend == "nccl" and local_world > gpus:
        raise ConfigError(
            "engine.backend",
            f"nccl needs one GPU per rank: {local_world} ranks per node, {gpus} GPU(s); for several ranks on "
            "one GPU use engine.backend=gloo engine.device=cuda (the one-GPU multi-rank mode)",
        )
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local % max(gpus, 1)) if want_cuda else torch.device("cpu")
    if opts.dtype == "auto":
        dtype = torch.bfloat16 if want_cuda else torch.float32
    else:
        dtype = getattr(torch, opts.dtype)
    return backend, device, dtype


def rank_layout(dctx: DistContext) -> str:
    """The record's ``rank_layout`` label: ranks, nodes and how they map to devices."""
    per_node = dctx.world_size // max(dctx.num_nodes, 1)
    head = f"{dctx.world_size} ranks on {dctx.num_nodes} node(s)"
    if dctx.device.type != "cuda":
        return f"{head}, {per_node} CPU processes per node ({dctx.backend})"
    gpus = torch.cuda.device_count()
    if per_node > gpus:
        return f"{head}, {per_node} ranks sharing {gpus} GPU(s) per node ({dctx.backend}, one-GPU multi-rank mode)"
    return f"{head}, one GPU per rank ({dctx.backend})"


def nccl_environment(opts: EngineOptions) -> dict[str, str]:
    """The NCCL process group's failure handling from the options: environment set before the group is made.

    ``TORCH_NCCL_ASYNC_ERROR_HANDLING`` (``engine.nccl_async_error_handling``; 1: the watchdog aborts the
    communicators and ends the process when a collective fails or exceeds ``engine.timeout_s``, so a dead
    peer costs at most the timeout) and ``TORCH_NCCL_BLOCKING_WAIT`` (``engine.nccl_blocking_wait``).
    """
    return {
        "TORCH_NCCL_ASYNC_ERROR_HANDLING": str(int(opts.nccl_async_error_handling)),
        "TORCH_NCCL_BLOCKING_WAIT": "1" if opts.nccl_blocking_wait else "0",
    }


def init_distributed(opts: EngineOptions) -> DistContext:
    """Join the process group described by the environment (torchrun's, or the spawner's), with a timeout
    (``engine.timeout_s``); with NCCL, its failure handling from the options first (``nccl_environment``)."""
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    backend, device, dtype = resolve_backend(opts, torch.cuda.is_available(), local_world=local_world)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if backend == "nccl":
        os.environ.update(nccl_environment(opts))
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend,
            timeout=datetime.timedelta(seconds=float(opts.timeout_s)),
            device_id=device if backend == "nccl" else None,  # gloo with CUDA tensors: no eager NCCL init
        )
    world = dist.get_world_size()
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    return DistContext(
        rank=dist.get_rank(),
        world_size=world,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        num_nodes=max(1, world // max(1, local_world)),
        backend=backend,
        device=device,
        dtype=dtype,
    )


def all_to_all_rows(x: torch.Tensor, send: list[int], recv: list[int]) -> torch.Tensor:
    """Rows of ``x [sum(send), C]`` to the ranks (``send[r]`` rows to rank r); returns ``[sum(recv), C]``."""
    out = x.new_empty((sum(recv), *x.shape[1:]))
    dist.all_to_all_single(out, x.contiguous(), output_split_sizes=recv, input_split_sizes=send)
    return out


def exchange_counts(send: torch.Tensor, device: torch.device) -> torch.Tensor:
    """int64 ``[G]`` rows each rank will send here, from this rank's ``send [G]`` (one all-to-all of counts)."""
    s = send.to(device=device, dtype=torch.int64)
    out = torch.empty_like(s)
    dist.all_to_all_single(out, s)
    return out.cpu()


class PhaseClock:
    """Seconds of the phases of one rank: CUDA events on a GPU, ``time.perf_counter`` on a CPU.

    ``start()`` optionally waits for every rank first (``barriers``), so that a phase's clock starts on all
    ranks together and a slow rank's phase is not charged to the others.
    """

    def __init__(self, device: torch.device, barriers: bool, enabled: bool = True) -> None:
        self.cuda = device.type == "cuda"
        self.barriers = barriers
        self.enabled = enabled
        self._open: list[tuple[object, object]] = []

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        if self.barriers and dist.is_initialized():
            dist.barrier()

    def start(self) -> object:
        if not self.enabled:  # a step timed as a whole: no phase clock, no sync, no barrier
            return None
        self.sync()
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def stop(self, handle: object) -> int:
        """Close the phase opened by ``handle``; returns its index for ``seconds`` (-1 when disabled)."""
        if not self.enabled:
            return -1
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._open.append((handle, end))
        else:
            self._open.append((handle, time.perf_counter()))
        return len(self._open) - 1

    def seconds(self) -> list[float]:
        """Every closed phase's seconds, in order; clears the clock."""
        if self.cuda:
            torch.cuda.synchronize()
            out = [a.elapsed_time(b) / 1e3 for a, b in self._open]  # type: ignore[union-attr]
        else:
            out = [float(b) - float(a) for a, b in self._open]  # type: ignore[arg-type]
        self._open = []
        return out


class AgreedFailure(SuiteError):
    """A user-input error that some rank hit during a checked step; every rank raises it."""


def agree(fn: Callable[[], T], src: int | None = None) -> T | None:
    """Run ``fn`` (on every rank, or on ``src`` only) and let every rank learn whether some rank failed.

    A ``SuiteError`` on any rank becomes an ``AgreedFailure`` on every rank (message of the lowest failing
    rank, prefixed ``rank r:`` when r is not 0), so that bad input stops the run everywhere, with no collective
    left waiting. With ``src`` set, ``fn``'s result is broadcast from that rank (it must be picklable).
    """
    rank, world = dist.get_rank(), dist.get_world_size()
    result: T | None = None
    error: str | None = None
    if src is None or rank == src:
        try:
            result = fn()
        except SuiteError as exc:
            error = str(exc)
    if src is None:
        errors: list[str | None] = [None] * world
        dist.all_gather_object(errors, error)
    else:
        box = [(error, result)]
        dist.broadcast_object_list(box, src=src)
        errors = [box[0][0] if r == src else None for r in range(world)]
        result = box[0][1]
    for r, e in enumerate(errors):
        if e is not None:
            raise AgreedFailure(e if r == 0 else f"rank {r}: {e}")
    return result


def is_collective_failure(exc: BaseException) -> bool:
    """True when ``exc`` looks like a consequence of a peer's failure (a collective error or timeout)."""
    if isinstance(exc, dist.DistError):
        return True
    # gloo (torch 2.13) raises a plain RuntimeError when a peer is gone ("Read error ... Connection reset by
    # peer"), not a DistError; its text is the only thing that tells it from any other RuntimeError.
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(h in text for h in _COLLECTIVE_HINTS)


def _store() -> dist.Store | None:
    try:
        return dist.distributed_c10d._get_default_store()  # noqa: SLF001 - the group's own store
    except Exception:  # noqa: BLE001 - no group, or a backend without one
        return None


def report_failure(message: str) -> bool:
    """Write this rank's failure to the group's store (first writer wins); True when it was written."""
    store = _store()
    if store is None:
        return False
    try:
        store.compare_set(ERROR_KEY, "", message)
        return True
    except Exception:  # noqa: BLE001 - the store may be gone with rank 0
        return False


def failure_message(wait_s: float = 3.0) -> str | None:
    """The first failure a rank wrote to the store, waiting up to ``wait_s`` for one; ``None`` if none."""
    store = _store()
    if store is None:
        return None
    deadline = time.monotonic() + wait_s
    while True:
        try:
            if store.check([ERROR_KEY]):
                return store.get(ERROR_KEY).decode("utf-8", "replace")
        except Exception:  # noqa: BLE001
            return None
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)
