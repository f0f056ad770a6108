import json
import os

import pytest

from common.atomic import atomic_write_json
from common.errors import RecordError
from common.records import RunRecord, config_hash, iter_record_paths, read_record, write_record


def make_record(metrics=None, seed=0, **cfg) -> RunRecord:
    config = {"seed": seed, "a": {"b": 1}, **cfg}
    return RunRecord(
        suite="moe",
        config=config,
        metrics=metrics or {"x": 1.5},
        seed=seed,
        started="2026-01-01T00:00:00+00:00",
        duration_s=0.1,
    )


def test_round_trip(tmp_path):
    rec = make_record({"x": 2.0, "n": 3}, series_x=[1])
    write_record(tmp_path, rec)
    back = read_record(tmp_path)
    assert back.metrics == {"x": 2.0, "n": 3}
    assert back.config_hash == rec.config_hash
    raw = json.loads((tmp_path / "result.json").read_text())
    assert list(raw)[0] == "schema"
    for key in ("schema", "suite", "config", "metrics", "series", "seed", "git_sha", "started", "duration_s"):
        assert key in raw


def test_nan_metric_is_stored_as_null(tmp_path):
    write_record(tmp_path, make_record({"x": float("nan")}))
    assert json.loads((tmp_path / "result.json").read_text())["metrics"]["x"] is None


def test_config_hash_ignores_order_and_non_semantic_keys():
    a = {"seed": 1, "x": {"p": 1, "q": 2}, "logger": {"kind": "none"}, "resume": False}
    b = {"x": {"q": 2, "p": 1}, "seed": 1, "logger": {"kind": "wandb_offline"}, "resume": True}
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash({**a, "seed": 2})


def test_interrupted_write_keeps_previous_record(tmp_path, monkeypatch):
    write_record(tmp_path, make_record({"x": 1.0}))
    before = (tmp_path / "result.json").read_bytes()

    def boom(fd):
        raise KeyboardInterrupt  # the process is stopped while the new record is being written

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(KeyboardInterrupt):
        write_record(tmp_path, make_record({"x": 99.0}))
    monkeypatch.undo()
    assert (tmp_path / "result.json").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]  # the temporary file was removed
    assert read_record(tmp_path).metrics["x"] == 1.0


def test_stale_temporary_file_is_ignored(tmp_path):
    run = tmp_path / "0"
    write_record(run, make_record())
    (run / ".tmp-result.json.abc").write_text('{"schema": "suite.run/1", "stat')  # killed mid-write
    assert list(iter_record_paths([tmp_path])) == [run / "result.json"]


@pytest.mark.parametrize(
    "content, match",
    [
        ("{not json", "unreadable"),
        (json.dumps({"schema": "other"}), "schema"),
        (json.dumps({"schema": "suite.run/1", "status": "running"}), "status"),
        (json.dumps({"schema": "suite.run/1", "status": "complete", "suite": "moe"}), "missing fields"),
    ],
)
def test_broken_records_raise_with_the_path(tmp_path, content, match):
    (tmp_path / "result.json").write_text(content)
    with pytest.raises(RecordError, match=match) as info:
        read_record(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(RecordError, match="no such folder"):
        list(iter_record_paths([tmp_path / "nope"]))


def test_unknown_suite_and_non_numeric_metric_are_refused():
    with pytest.raises(RecordError, match="suite"):
        RunRecord(suite="x", config={}, metrics={}, seed=0, started="", duration_s=0)
    with pytest.raises(RecordError, match="metric .a. must be a number or null"):
        make_record({"a": "text"})


def test_atomic_json_refuses_nan_without_touching_target(tmp_path):
    target = tmp_path / "x.json"
    atomic_write_json(target, {"ok": 1})
    with pytest.raises(ValueError):
        atomic_write_json(target, {"bad": float("nan")})
    assert json.loads(target.read_text()) == {"ok": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


def test_undefined_metric_round_trips_as_null(tmp_path):
    """A ratio that is 0/0 (cross-node volume on one node) is stored as null and read back as None."""
    write_record(tmp_path, make_record({"ratio": float("nan"), "x": 1.0}))
    assert read_record(tmp_path).metrics == {"ratio": None, "x": 1.0}


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("config", 5, "field 'config' must be a dict, got int"),
        ("metrics", [1, 2], "field 'metrics' must be a dict, got list"),
        ("seed", "0", "field 'seed' must be a int, got str"),
        ("series", {"x": 3}, "series 'x' must be a list"),
        ("metrics", {"acc": "high"}, "metric 'acc' must be a number"),
    ],
)
def test_valid_json_of_the_wrong_types_is_refused_by_name(tmp_path, field, value, message):
    rec = RunRecord(
        suite="fed", config={"seed": 0}, metrics={"acc": 0.5}, seed=0, started="t", duration_s=1.0
    )
    path = write_record(tmp_path, rec)
    raw = json.loads(path.read_text())
    raw[field] = value
    path.write_text(json.dumps(raw))
    with pytest.raises(RecordError, match=message):
        read_record(path)
