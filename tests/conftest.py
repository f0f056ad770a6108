"""Shared fixtures: paths to the repo, the configs and the read-only shared data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from common.threads import limit_threads
from runners.hydra_entry import install

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
SHARED = (REPO / ".." / "shared").resolve()
REAL_TRACE = SHARED / "data" / "moe" / "deepseek_v2_lite_prefill.npz"
needs_real_trace = pytest.mark.skipif(
    not REAL_TRACE.is_file(), reason=f"needs the shared real trace {REAL_TRACE}, which is absent here"
)

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("SUITE_PROGRESS", "0")
limit_threads()  # one BLAS / torch thread per process, as the runners: two cores, noisy neighbours


def shared_file(rel: str) -> Path:
    """Path of a file under ../shared; skips the test with the reason when it is absent."""
    path = SHARED / rel
    if not path.exists():
        pytest.skip(f"needs the shared data file ../shared/{rel}, which is absent here")
    return path


@pytest.fixture(scope="session", autouse=True)
def schemas() -> None:
    """Every option schema in Hydra's ConfigStore before a test composes (what ``hydra_cli`` does first)."""
    install()


@pytest.fixture
def repo_root() -> Path:
    return REPO


def real_trace_head(tokens: int, layers: int | None = None) -> tuple[np.ndarray, int]:
    """The first ``tokens`` tokens (and ``layers`` layers) of the shared real trace, and its expert count E.

    Returns ``experts [tokens, layers, top_k]`` (uint8) and E; skips the test when the file is absent.
    """
    path = shared_file("data/moe/deepseek_v2_lite_prefill.npz")
    with np.load(path) as d:
        experts = d["experts"][:tokens] if layers is None else d["experts"][:tokens, :layers]
        return experts, int(d["num_experts"])
