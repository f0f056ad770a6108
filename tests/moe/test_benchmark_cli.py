"""The benchmarks' bad input (``benchmarks.cross_node``, ``benchmarks.replan``): one usage error naming the
option, exit status 2, nothing run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from benchmarks import cross_node, layer_model, replan

CASES = [
    (
        cross_node.main,
        ["--search-tokens", "abc"],
        "argument --search-tokens: expected comma-separated integers",
    ),
    (cross_node.main, ["--search-tokens", "8192,0"], "argument --search-tokens: expected integers >= 1"),
    (cross_node.main, ["--seeds", "-1"], "argument --seeds: expected integers >= 0"),
    (cross_node.main, ["--seeds", ""], "argument --seeds: expected at least one seed"),
    (cross_node.main, ["--cap", "0"], "argument --cap: expected a number in (0.0, inf), got '0'"),
    (replan.main, ["--windows", "1"], "argument --windows: expected an integer >= 2, got '1'"),
    (replan.main, ["--drift", "1.5"], "argument --drift: expected a number in [0.0, 1.0], got '1.5'"),
    (replan.main, ["--drift", "nan"], "argument --drift: expected a number in [0.0, 1.0], got 'nan'"),
    (replan.main, ["--budget", "-1"], "argument --budget: expected an integer >= 0, got '-1'"),
    (layer_model.main, ["--tokens", "1000"], "argument --tokens: expected integers >= 2048, got '1000'"),
    (layer_model.main, ["--tokens", ""], "argument --tokens: expected at least one token count"),
    (layer_model.main, ["--repeats", "0"], "argument --repeats: expected an integer >= 1, got '0'"),
]


@pytest.mark.parametrize(("main", "argv", "message"), CASES)
def test_bad_options_are_one_usage_error(
    main: Callable[[list[str]], None],
    argv: list[str],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--out", str(tmp_path / "run")])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
