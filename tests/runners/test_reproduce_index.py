"""``runners.reproduce``: INDEX.md lists every step's tables, also after a run of some steps (``--only``)."""

from __future__ import annotations

from pathlib import Path

from runners.reproduce import index_entries
from runners.reproduce_steps import STEPS


def test_index_keeps_the_steps_that_did_not_run(tmp_path: Path) -> None:
    first, last = STEPS[0].name, STEPS[-1].name
    folder = tmp_path / "quick"
    (folder / f"{last}_vs_paper").mkdir(parents=True)
    for p in (folder / f"{first}.md", folder / f"{last}.csv", folder / f"{last}_vs_paper" / "fig.png"):
        p.write_text("x")
    (folder / "timings").mkdir()
    (folder / "timings" / f"{first}.csv").write_text("x")  # not a table of the index
    got = [str(p) for p in index_entries(tmp_path, "quick")]
    assert got == [f"quick/{first}.md", f"quick/{last}.csv", f"quick/{last}_vs_paper/fig.png"]
