"""Shared fixtures: paths to the repo, the configs and the read-only shared data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
SHARED = (REPO / ".." / "shared").resolve()

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("SUITE_PROGRESS", "0")


def shared_file(rel: str) -> Path:
    """Path of a file under ../shared; skips the test with the reason when it is absent."""
    path = SHARED / rel
    if not path.exists():
        pytest.skip(f"needs the shared data file ../shared/{rel}, which is absent here")
    return path


@pytest.fixture
def repo_root() -> Path:
    return REPO
