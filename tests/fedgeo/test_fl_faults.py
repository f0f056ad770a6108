"""Round accounting, injected faults, the watchdog and checkpoint/resume of ``mode=fl`` (in-process)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from common.errors import ConfigError, SuiteError
from common.experiment import run_experiment
from fedgeo.fl.faults import Fault, parse_faults
from fedgeo.fl.settings import FLSettings
from fedgeo.fl.simulation import watch
from fedgeo.report import fl_paper_markdown, fl_paper_rows
from runners.fed import body
from tests.fedgeo.conftest import SMALL, compose_fed

REPO = Path(__file__).resolve().parents[2]
CRASH_1_FROM_2 = "fl.faults=[{client:1,from_round:2,kind:crash}]"


def _events(run_dir: Path, kind: str) -> list[dict]:
    lines = (run_dir / "events.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e.get("kind") == kind]


def test_faults_are_validated_with_the_key_named() -> None:
    assert parse_faults([{"client": 1, "from_round": 2, "kind": "hang"}], 3) == (Fault(1, 2, "hang"),)
    bad = [
        ([{"client": 1, "kind": "explode"}], "fl.faults[0].kind"),
        ([{"client": -1, "kind": "crash"}], "fl.faults[0].client"),
        ([{"client": 0, "kind": "crash", "form_round": 2}], "fl.faults[0].form_round"),
        ([{"client": 0, "kind": "slow"}], "fl.faults[0].seconds"),
        ([{"client": 0, "kind": "crash", "from_round": 9}], "fl.faults[0].from_round"),
        ([{"kind": "crash"}], "fl.faults[0].client"),
        ("crash", "fl.faults"),
    ]
    for raw, key in bad:
        with pytest.raises(ConfigError) as err:
            FLSettings(rounds=3, faults=raw)
        assert err.value.key == key, raw
    for key, kw in (
        ("fl.min_reply_fraction", {"min_reply_fraction": 1.5}),
        ("fl.on_degraded", {"on_degraded": "x"}),
    ):
        with pytest.raises(ConfigError) as err:
            FLSettings(**kw)
        assert err.value.key == key


def test_a_fault_on_a_client_the_federation_lacks_is_refused(tmp_path: Path) -> None:
    cfg = compose_fed(*SMALL, "fl.faults=[{client:3,kind:crash}]", "augment=none", tmp=tmp_path)
    with pytest.raises(ConfigError) as err:
        run_experiment(cfg, "fed", body, run_dir=tmp_path / "r")
    assert err.value.key == "fl.faults[0].client"


def test_a_clean_run_counts_every_reply_and_is_complete(fed_run, tmp_path: Path) -> None:
    rec = fed_run("mode=fl", "augment=none")
    assert rec.labels["status"] == "complete" and rec.metrics["rounds_degraded"] == 0
    assert rec.series["replies_expected"] == [3.0, 3.0] == rec.series["replies_received"]
    assert rec.series["replies_failed"] == [0.0, 0.0] == rec.series["replies_timed_out"]
    phases = [e["phase"] for e in _events(tmp_path / "0", "replies")]
    assert phases[-3:] == ["prepare", "train", "train"]


def test_a_crashed_client_degrades_the_run_and_is_counted(fed_run, tmp_path: Path) -> None:
    rec = fed_run("mode=fl", "augment=none", "fl.rounds=3", CRASH_1_FROM_2)
    assert rec.labels["status"] == "degraded" and rec.metrics["rounds_degraded"] == 2
    assert rec.series["replies_received"] == [3.0, 2.0, 2.0]
    assert rec.series["replies_failed"] == [0.0, 1.0, 1.0] and rec.series["replies_timed_out"] == [0.0] * 3
    assert rec.metrics["replies_failed_total"] == 2 and rec.metrics["reply_fraction_min"] == pytest.approx(
        2 / 3
    )
    train = [e for e in _events(tmp_path / "0", "replies") if e["phase"] == "train"]
    assert [e["degraded"] for e in train] == [False, True, True]
    lenient = fed_run("mode=fl", "augment=none", "fl.rounds=3", CRASH_1_FROM_2, "fl.min_reply_fraction=0.6")
    assert lenient.labels["status"] == "complete" and lenient.metrics["replies_failed_total"] == 2
    table = fl_paper_rows([rec.to_dict(), lenient.to_dict()])
    assert list(table["degraded"]) == [1] and "degraded" in fl_paper_markdown(table)


def test_a_hung_client_times_out_and_the_run_still_ends(fed_run) -> None:
    rec = fed_run(
        "mode=fl", "augment=none", "fl.timeout_s=3", "fl.faults=[{client:0,from_round:2,kind:hang}]"
    )
    assert rec.labels["status"] == "degraded" and rec.metrics["rounds"] == 2
    assert rec.series["replies_timed_out"] == [0.0, 1.0] and rec.series["replies_received"] == [3.0, 2.0]


def test_a_slow_client_within_the_timeout_is_received(fed_run) -> None:
    rec = fed_run("mode=fl", "augment=none", "fl.faults=[{client:2,from_round:1,kind:slow,seconds:0.1}]")
    assert rec.labels["status"] == "complete" and rec.metrics["replies_received_total"] == 6


def test_on_degraded_fail_stops_with_one_line(tmp_path: Path) -> None:
    cfg = compose_fed(*SMALL, "augment=none", CRASH_1_FROM_2, "fl.on_degraded=fail", tmp=tmp_path)
    with pytest.raises(SuiteError) as err:
        run_experiment(cfg, "fed", body, run_dir=tmp_path / "r")
    msg = str(err.value)
    assert "\n" not in msg and "fl.min_reply_fraction=1" in msg and "round 2 received 2 of 3" in msg
    assert "rounds 1-1 are checkpointed" in msg and not (tmp_path / "r" / "result.json").exists()


@pytest.mark.parametrize(
    ("strategy", "extra"),
    [("scaffold", ()), ("fedadam", ()),
     ("fedavg", ("fl.lr_candidates=[0.01,0.5]", "fl.local_budget=steps", "fl.local_steps=3"))],
)  # fmt: skip
def test_resume_continues_from_the_last_complete_round_bit_for_bit(
    tmp_path: Path, strategy: str, extra: tuple[str, ...]
) -> None:
    """An interrupted run (a crash in round 3 under ``on_degraded=fail``), resumed without the fault, gives
    the uninterrupted run's numbers exactly; client state (SCAFFOLD), server state (FedAdam), the searched
    learning rate and the per-round training facts (equal-step budget) included."""
    common = (*SMALL, "augment=ggeur", f"strategy={strategy}", "fl.rounds=4", *extra)
    ref = run_experiment(compose_fed(*common, tmp=tmp_path), "fed", body, run_dir=tmp_path / "ref")
    broken = compose_fed(*common, "fl.faults=[{client:2,from_round:3,kind:crash}]", "fl.on_degraded=fail",
                         tmp=tmp_path)  # fmt: skip
    with pytest.raises(SuiteError):
        run_experiment(broken, "fed", body, run_dir=tmp_path / "broken")
    cfg = compose_fed(*common, f"resume_dir={tmp_path / 'broken'}", tmp=tmp_path)
    rec = run_experiment(
        cfg, "fed", body, run_dir=tmp_path / "resumed", resume=True, resume_roots=[tmp_path / "broken"]
    )
    assert rec.metrics["resumed_round"] == 2 and rec.labels["resumed_from_checkpoint"].startswith(
        str(tmp_path / "broken")
    )
    for key in ("acc", "loss", "acc_domain_avg", "replies_received", "train_loss_start", "local_steps_max"):
        assert rec.series[key] == ref.series[key], key
    assert rec.metrics["lr"] == ref.metrics["lr"] and rec.labels["converged"] == ref.labels["converged"]
    assert rec.metrics["acc_final"] == ref.metrics["acc_final"] and rec.labels["status"] == "complete"


def test_resume_false_starts_over(tmp_path: Path) -> None:
    cfg = compose_fed(*SMALL, "augment=none", CRASH_1_FROM_2, "fl.on_degraded=fail", tmp=tmp_path)
    with pytest.raises(SuiteError):
        run_experiment(cfg, "fed", body, run_dir=tmp_path / "r")
    again = compose_fed(*SMALL, "augment=none", "resume=false", f"resume_dir={tmp_path / 'r'}", tmp=tmp_path)
    rec = run_experiment(again, "fed", body, run_dir=tmp_path / "r2")
    assert rec.metrics["resumed_round"] == 0 and "resumed_from_checkpoint" not in rec.labels


def test_watchdog_keeps_a_finished_run_and_stops_a_stuck_one() -> None:
    done = threading.Event()

    def finishes_then_lingers() -> None:
        done.set()
        time.sleep(30)  # an engine slow to shut down after the server app finished

    t0 = time.monotonic()
    watch(finishes_then_lingers, 60, done, "test", grace_s=0.2)
    assert done.is_set()
    stopped: list[bool] = []
    with pytest.raises(SuiteError, match="did not finish within 0.5 s"):
        watch(lambda: time.sleep(30), 0.5, threading.Event(), "test", stop=lambda: stopped.append(True))
    assert stopped == [True] and time.monotonic() - t0 < 29


@pytest.mark.slow
def test_ray_counts_a_crash_and_a_hang_and_the_process_exits(tmp_path: Path) -> None:
    """Ray (actors of one CPU each), as a user runs it: client 1 crashes from round 2, client 0 hangs for
    good in round 3 (its actor never returns); every round is counted, the run ends ``degraded`` with its
    record, and the process exits (Flower's worker stuck on the hung actor does not keep it alive)."""
    faults = "fl.faults=[{client:1,from_round:2,kind:crash},{client:0,from_round:3,kind:hang}]"
    # fl.timeout_s covers round 1 with the Ray actors cold-starting (20 s timed out there in one CI run)
    args = [*SMALL, "mode=fl", "augment=none", "fl.backend=ray", "fl.rounds=3", "fl.timeout_s=45", faults]
    rec = _cli(tmp_path, "runners.fed", args)
    assert rec["labels"]["status"] == "degraded" and rec["metrics"]["rounds"] == 3
    assert rec["series"]["replies_failed"] == [0.0, 1.0, 1.0]
    assert rec["series"]["replies_timed_out"] == [0.0, 0.0, 1.0] and rec["series"]["replies_received"] == [
        3,
        2,
        1,
    ]


def _cli(tmp_path: Path, module: str, args: list[str]) -> dict:
    """Run ``python -m module args`` in its own process (a generous guard against a process that never
    exits) and return its record."""
    run_dir = tmp_path / "cli"
    cmd = [sys.executable, "-m", module, *args, f"hydra.run.dir={run_dir}", f"paths.feature_cache={tmp_path}"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads((run_dir / "result.json").read_text())


@pytest.mark.slow
def test_ray_resumes_an_interrupted_run_to_the_uninterrupted_numbers(tmp_path: Path) -> None:
    """A run stopped in round 3 (in-process, ``on_degraded=fail``) continues on Ray from round 2 and ends
    with the uninterrupted run's numbers (the checkpoint key leaves the backend out)."""
    common = (*SMALL, "augment=none", "strategy=scaffold", "fl.rounds=3")
    ref = run_experiment(compose_fed(*common, tmp=tmp_path), "fed", body, run_dir=tmp_path / "ref")
    broken = compose_fed(*common, "fl.faults=[{client:0,from_round:3,kind:crash}]", "fl.on_degraded=fail",
                         tmp=tmp_path)  # fmt: skip
    with pytest.raises(SuiteError):
        run_experiment(broken, "fed", body, run_dir=tmp_path / "broken")
    cfg = compose_fed(
        *common, "fl.backend=ray", "fl.timeout_s=60", f"resume_dir={tmp_path / 'broken'}", tmp=tmp_path
    )
    rec = run_experiment(cfg, "fed", body, run_dir=tmp_path / "ray")
    assert rec.metrics["resumed_round"] == 2 and rec.series["replies_round"] == [1.0, 2.0, 3.0]
    assert rec.series["acc"] == ref.series["acc"] and rec.series["loss"] == ref.series["loss"]
