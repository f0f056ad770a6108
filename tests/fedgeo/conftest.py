"""Shared fixtures of the fedgeo tests: the path of ../shared/data/fl (skip when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

FL_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "fl"


@pytest.fixture
def fl_data() -> Path:
    """The real FL data folder; the test skips with the reason when it is missing."""
    if not (FL_DATA / "README.md").is_file():
        pytest.skip(f"real FL data not found at {FL_DATA.resolve()} (../shared/data/fl)")
    return FL_DATA
