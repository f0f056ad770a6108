"""``python -m benchmarks.cross_node``'s bad input: one usage error naming the option, exit status 2, no run."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.cross_node import main


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--search-tokens", "abc"],
            "argument --search-tokens: expected comma-separated integers, got 'abc'",
        ),
        (["--search-tokens", "8192,0"], "argument --search-tokens: expected integers >= 1"),
        (["--seeds", "-1"], "argument --seeds: expected integers >= 0"),
        (["--seeds", ""], "argument --seeds: expected at least one seed"),
    ],
)
def test_bad_options_are_one_usage_error(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--out", str(tmp_path / "run")])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
