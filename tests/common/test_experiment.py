import json

import numpy as np
import pytest

from common.errors import ConfigError
from common.experiment import RunContext, RunOutput, run_experiment
from common.records import read_record

CALLS: list[int] = []


def body(ctx: RunContext) -> RunOutput:
    CALLS.append(ctx.seed)
    x = ctx.rng.normal(size=1000)
    ctx.logger.log({"loss": float(x[0])}, step=0, step_name="round")
    np.save(ctx.artifact("draws.npy"), x)
    return RunOutput(
        metrics={"mean": float(x.mean())}, series={"x": x[:3].tolist()}, series_step={"x": "round"}
    )


def cfg(seed=0, lr=0.1):
    return {"seed": seed, "lr": lr, "logger": {"kind": "none"}}


def test_same_seed_same_record_numbers(tmp_path):
    a = run_experiment(cfg(), "fed", body, tmp_path / "a")
    b = run_experiment(cfg(), "fed", body, tmp_path / "b")
    assert a.metrics == b.metrics and a.series == b.series
    assert read_record(tmp_path / "a").artifacts == ["draws.npy"]
    events = [json.loads(line) for line in (tmp_path / "a" / "events.jsonl").read_text().splitlines()]
    assert [e["kind"] for e in events] == ["start", "metrics", "summary", "finish"]
    assert events[1]["step_name"] == "round"


def test_resume_skips_complete_and_reruns_broken(tmp_path):
    sweep = tmp_path / "multirun" / "s1"
    CALLS.clear()
    for i, seed in enumerate([0, 1, 2]):
        run_experiment(cfg(seed), "fed", body, sweep / str(i))
    assert CALLS == [0, 1, 2]
    (sweep / "1" / "result.json").write_text("{ truncated")  # a broken record
    (sweep / "2" / "result.json").unlink()  # a missing one
    CALLS.clear()
    sweep2 = tmp_path / "multirun" / "s2"
    recs = [
        run_experiment(
            cfg(seed), "fed", body, sweep2 / str(i), resume=True, resume_roots=[tmp_path / "multirun"]
        )
        for i, seed in enumerate([0, 1, 2])
    ]
    assert CALLS == [1, 2]  # only the broken and the missing run were redone
    assert recs[0].resumed_from == str(sweep / "0" / "result.json")
    assert read_record(sweep2 / "0").metrics == read_record(sweep / "0").metrics
    # A third pass over the same roots now finds everything complete.
    CALLS.clear()
    for i, seed in enumerate([0, 1, 2]):
        run_experiment(
            cfg(seed), "fed", body, sweep2 / str(i), resume=True, resume_roots=[tmp_path / "multirun"]
        )
    assert CALLS == []


def test_resume_does_not_match_other_configs(tmp_path):
    run_experiment(cfg(lr=0.1), "fed", body, tmp_path / "r" / "0")
    CALLS.clear()
    run_experiment(cfg(lr=0.2), "fed", body, tmp_path / "r" / "1", resume=True, resume_roots=[tmp_path / "r"])
    assert CALLS == [0]


def test_failing_body_writes_no_record(tmp_path):
    def bad(ctx):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        run_experiment(cfg(), "fed", bad, tmp_path)
    assert not (tmp_path / "result.json").exists()
    last = json.loads((tmp_path / "events.jsonl").read_text().splitlines()[-1])
    assert last == {"t": last["t"], "kind": "finish", "status": "failed"}


@pytest.mark.parametrize("seed", [None, -3, "1", 1.5])
def test_bad_seed_names_the_key(tmp_path, seed):
    with pytest.raises(ConfigError, match="'seed'"):
        run_experiment({"seed": seed}, "fed", body, tmp_path)
    assert not (tmp_path / "result.json").exists()
