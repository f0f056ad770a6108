"""``dataset=file``: the one-table layout ``X``, ``y``, ``domain`` (an int per row) and one error line for
every malformed file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.errors import InputError
from fedgeo.filedata import load_embeddings_npz
from tests.runners.test_cli_errors import cli


def _table(path: Path, **extra: np.ndarray) -> Path:
    rng = np.random.default_rng(0)
    arrays = {"X": rng.normal(size=(30, 3)).astype(np.float32), "y": np.arange(30) % 3} | extra
    np.savez(path, **arrays)
    return path


def test_domain_ids_per_row_become_domains_in_increasing_order(tmp_path: Path) -> None:
    dom = np.repeat([7, 2, 5], 10)
    ds = load_embeddings_npz(_table(tmp_path / "a.npz", domain=dom))
    assert ds.domain_names == ("domain2", "domain5", "domain7") and ds.num_classes == 3
    assert np.bincount(ds.domains).tolist() == [10, 10, 10]
    first_of_7 = ds.features[ds.domains == 2][0]
    np.testing.assert_array_equal(first_of_7, np.load(tmp_path / "a.npz")["X"][0])


def test_domain_names_name_the_sorted_ids(tmp_path: Path) -> None:
    f = _table(tmp_path / "n.npz", domain=np.repeat([1, 0], 15), domain_names=np.array(["web", "cam"]))
    assert load_embeddings_npz(f).domain_names == ("web", "cam")


def test_without_domain_the_table_is_one_domain(tmp_path: Path) -> None:
    assert load_embeddings_npz(_table(tmp_path / "one.npz")).domain_names == ("all",)


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"X": np.array([[1.0, 2.0], [3.0]], dtype=object), "y": np.array([0, 1])}, "'X' cannot be read"),
        (
            {"X": np.zeros((4, 2)), "y": np.array([0, 1, 0, 1]), "domain": np.zeros(4)},
            "'domain' must be integers",
        ),
        ({"X": np.zeros((4, 2)), "y": np.array([0, 1, 0, 1]), "domain": np.zeros(3, dtype=int)}, "'domain'"),
        ({"X": np.zeros((4, 2)), "y": np.array([0.0, 1.0, 0.0, 1.0])}, "labels must be integers"),
        (
            {
                "X": np.zeros((4, 2)),
                "y": np.array([0, 1, 0, 1]),
                "domain": np.array([0, 0, 1, 1]),
                "domain_names": np.array(["a"]),
            },
            "'domain_names' has 1 names",
        ),
        ({"features": np.zeros((4, 2))}, "expected arrays X, y"),
    ],
)
def test_malformed_files_are_one_input_error(tmp_path: Path, arrays: dict, match: str) -> None:
    f = tmp_path / "bad.npz"
    np.savez(f, **arrays)
    with pytest.raises(InputError, match=match) as err:
        load_embeddings_npz(f)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("extra", "first_words"),
    [
        ([], "error: "),
        (["fl.local_budget=passes"], "error: config key 'fl.local_budget'"),
        (["fl.weight_by=nope"], "error: config key 'fl.weight_by'"),
        (["augment.min_class_count=0"], "error: config key 'augment.min_class_count'"),
    ],
)
def test_cli_bad_file_or_budget_is_one_line_exit_2(extra, first_words, tmp_path, monkeypatch, capsys) -> None:
    f = tmp_path / "objects.npz"
    np.savez(f, X=np.array([[1.0, 2.0], [3.0]], dtype=object), y=np.array([0, 1]))
    args = ["dataset=file", f"dataset.path={f}", *extra]
    code, err = cli("runners.fed", *args, tmp_path=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    assert code == 2 and err[-1].startswith(first_words), err[-3:]
    assert sum(line.startswith("error:") for line in err) == 1 and len(err) <= 2
    if not extra:
        assert "'X' cannot be read" in err[-1]
    assert not (tmp_path / "run" / "result.json").exists()
