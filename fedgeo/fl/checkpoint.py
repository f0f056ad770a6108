"""Per-round checkpoints of a federated run, and where ``resume=true`` finds one.

After every training round the server writes ``checkpoint.npz`` (atomically) in the run's FL folder:
the global model (``global/<name>``), the strategy's server state (``server/<name>``), the RNG states of
the server process (Python ``random``, NumPy's global state, torch's CPU generator) and, as JSON in
``meta``, the round, the checkpoint key and what the run had recorded so far (evaluated rounds, reply
counts, failures). Every client writes its strategy state after each round it trains,
``client_<k>.state_<round>.npz``, next to its data (SCAFFOLD's control, FedDyn's gradient, MOON's previous
model), keeping the newest two.

The *key* is the config hash without the options that do not change what a complete round computes
(``fl.backend``, ``fl.timeout_s``, ``fl.faults``, ...), so a run interrupted by an injected fault, a
timeout or a crash resumes under the same config with or without the fault, on any backend.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.atomic import atomic_savez
from common.records import config_hash
from fedgeo.fl.training import Arrays

NAME = "checkpoint.npz"
# fl options that change neither the math of a complete round nor the model (only how a run copes).
NON_SEMANTIC_FL = (
    "backend",
    "num_cpus",
    "timeout_s",
    "faults",
    "min_reply_fraction",
    "on_degraded",
    "checkpoint",
)
_STATE = re.compile(r"client_(\d+)\.state_(\d+)\.npz$")


def checkpoint_key(config: Mapping[str, Any]) -> str:
    """The config hash a checkpoint is valid for (``NON_SEMANTIC_FL`` left out)."""
    cfg = dict(config)
    cfg["fl"] = {k: v for k, v in dict(cfg.get("fl") or {}).items() if k not in NON_SEMANTIC_FL}
    return config_hash(cfg)


@dataclass
class Checkpoint:
    """A loaded checkpoint: ``round``, ``global_params``, ``server_state``, ``progress`` (the run's
    records so far) and ``rng`` (restored by ``restore_rng``)."""

    round: int
    key: str
    global_params: Arrays
    server_state: Arrays | None
    progress: dict[str, Any]
    rng: dict[str, Any]


def _rng_state() -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 - the legacy state is saved
    meta = {"python": random.getstate(), "numpy": [kind, int(pos), int(has_gauss), float(cached)]}
    return meta, {"rng/numpy_keys": np.asarray(keys), "rng/torch": torch.get_rng_state().numpy()}


def restore_rng(ck: Checkpoint) -> None:
    """Set the server process's RNGs to the checkpoint's (Python tuples come back from JSON as lists)."""
    version, internal, gauss = ck.rng["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, pos, has_gauss, cached = ck.rng["numpy"]
    np.random.set_state((kind, ck.rng["numpy_keys"], pos, has_gauss, cached))  # noqa: NPY002
    torch.set_rng_state(torch.from_numpy(np.array(ck.rng["torch"], dtype=np.uint8)))


def save_checkpoint(path: Path, rnd: int, key: str, params: Arrays, server_state: Arrays | None,
                    progress: dict[str, Any]) -> None:  # fmt: skip
    """Write round ``rnd``'s checkpoint to ``path`` atomically."""
    rng_meta, rng_arrays = _rng_state()
    meta = {"round": rnd, "key": key, "progress": progress, "rng": rng_meta,
            "has_server_state": server_state is not None}  # fmt: skip
    arrays = {f"global/{k}": v for k, v in params.items()}
    arrays |= {f"server/{k}": v for k, v in (server_state or {}).items()}
    atomic_savez(path, compressed=False, meta=np.array(json.dumps(meta)), **arrays, **rng_arrays)


def read_meta(path: Path) -> dict[str, Any] | None:
    """A checkpoint's ``meta`` (``None`` when the file is unreadable)."""
    try:
        with np.load(path) as z:
            return json.loads(str(z["meta"]))
    except (OSError, ValueError, KeyError):
        return None


def load_checkpoint(path: Path) -> Checkpoint:
    """The checkpoint at ``path``."""
    with np.load(path) as z:
        meta = json.loads(str(z["meta"]))
        part = {
            p: {k.split("/", 1)[1]: z[k] for k in z.files if k.startswith(p + "/")}
            for p in ("global", "server")
        }
        rng = meta["rng"] | {"numpy_keys": z["rng/numpy_keys"], "torch": z["rng/torch"]}
    server = part["server"] if meta["has_server_state"] else None
    return Checkpoint(int(meta["round"]), meta["key"], part["global"], server, meta["progress"], rng)


def find_checkpoint(roots: Sequence[Path], key: str) -> Path | None:
    """The checkpoint of ``key`` with the most rounds under ``roots`` (newest file on a tie), of a run
    that did not finish (no ``result.json`` in its run folder, the checkpoint's folder's parent)."""
    best: tuple[int, float, Path] | None = None
    for root in roots:
        if not Path(root).is_dir():
            continue
        for path in Path(root).rglob(NAME):
            if (path.parent.parent / "result.json").is_file():
                continue  # a finished run's: another job of a sweep, not something to continue
            meta = read_meta(path)
            if meta is None or meta.get("key") != key:
                continue
            cand = (int(meta["round"]), path.stat().st_mtime, path)
            if best is None or cand[:2] > best[:2]:
                best = cand
    return None if best is None else best[2]


def client_states(folder: Path) -> list[tuple[int, int, Path]]:
    """``(client, round, path)`` of every client state file in ``folder``."""
    found = [(_STATE.search(p.name), p) for p in folder.glob("client_*.state_*.npz")]
    return [(int(m.group(1)), int(m.group(2)), p) for m, p in found if m]


def prepare_folder(work: Path, source: Path | None) -> int:
    """Make ``work`` start from checkpoint ``source`` (copied in with the client states of its rounds), or
    from nothing (``None``: stale checkpoint files removed). Returns the checkpoint's round (0 = none)."""
    work.mkdir(parents=True, exist_ok=True)
    if source is None:
        (work / NAME).unlink(missing_ok=True)
        for _, _, p in client_states(work):
            p.unlink()
        return 0
    rnd = int((read_meta(source) or {"round": 0})["round"])
    if source.resolve() != (work / NAME).resolve():
        shutil.copyfile(source, work / NAME)
        for _, j, p in client_states(source.parent):
            if j <= rnd:
                shutil.copyfile(p, work / p.name)
    for _, j, p in client_states(work):
        if j > rnd:  # written during the round that did not finish
            p.unlink()
    return rnd


def save_client_state(folder: Path, k: int, rnd: int, state: Arrays) -> None:
    """Client ``k``'s strategy state after round ``rnd``; older files beyond the newest two are removed."""
    atomic_savez(folder / f"client_{k}.state_{rnd}.npz", compressed=False, **state)
    older = sorted(j for c, j, _ in client_states(folder) if c == k and j < rnd)
    for j in older[:-1]:
        (folder / f"client_{k}.state_{j}.npz").unlink(missing_ok=True)


def load_client_state(folder: Path, k: int, rnd: int) -> Arrays:
    """Client ``k``'s newest saved state from before round ``rnd`` (``{}`` when none)."""
    mine = [(j, p) for c, j, p in client_states(folder) if c == k and j < rnd]
    if not mine:
        return {}
    with np.load(max(mine)[1]) as z:
        return {n: z[n] for n in z.files}
