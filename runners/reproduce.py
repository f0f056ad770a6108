"""``python -m runners.reproduce [quick|full|bench]``: the reviewer's command.

Runs the sweeps behind every reproduced table (Hydra multirun of the ``experiment/`` presets), aggregates
them into ``results/<mode>/``, compares with the papers' reported numbers, and prints where each table is.
Every job runs with ``resume=true`` against its own sweep folder, so an interrupted reproduction picks up
where it stopped: completed jobs are not run again.

- ``quick``: small token counts, few seeds, short solver limits; minutes on a laptop-class CPU.
- ``full``: the presets as written (paper-scale settings where this machine allows).
- ``bench``: the benchmarks (solver times, statistics and cost-model throughput, GGEUR timings).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from common.aggregate import group, load_records, write_tables
from common.atomic import atomic_write_text
from common.log import get_logger
from runners.reproduce_steps import BENCHMARK_MODULES, STEPS, Step

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


def run_step(
    step: Step, mode: str, out_root: Path, sweep_root: Path, dry_run: bool = False, shared: Path = SHARED
) -> list[Path]:
    """Run one step's multiruns (resumable) and write its tables; returns the files written.

    Sweeps that need files missing under ``shared`` run with the step's offline overrides or are skipped,
    each with one line saying what is missing.
    """
    log = get_logger("reproduce")
    sweep = sweep_root / mode / step.name
    plan, missing = step.plan(shared)
    if missing:
        what = "runs without them" if plan else "skipped"
        log.warning(f"[{step.name}] {what}: missing {', '.join(str(shared / p) for p in missing)}")
    if not plan:
        return []
    t0 = time.perf_counter()
    for k, sweep_overrides in enumerate(plan):
        _run_sweep(
            step, sweep / str(k), [*sweep_overrides, *(step.quick if mode == "quick" else step.full)], dry_run
        )
    if dry_run:
        return []
    records, problems = load_records([sweep])
    for p in problems:
        log.warning(f"skipped: {p}")
    out = out_root / mode / step.name
    written = write_tables(group(records, step.by, step.metrics), step.by, out)
    if step.timings:
        write_tables(group(records, step.by, step.timings), step.by, out_root / mode / "timings" / step.name)
    if step.report is not None:
        dicts = [{**r.record.to_dict(), "path": str(r.path)} for r in records]
        written += step.report(dicts, out_root / mode / f"{step.name}_vs_paper")
    log.info(f"[{step.name}] {len(records)} runs in {time.perf_counter() - t0:.0f} s")
    return written


def _run_sweep(step: Step, part: Path, overrides: list[str], dry_run: bool) -> None:
    """One multirun of ``step.runner`` into ``part``, resuming its complete jobs."""
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "WANDB_MODE": "offline", "SUITE_PROGRESS": "0"}
    cmd = [sys.executable, "-m", step.runner, "-m", *overrides, f"hydra.sweep.dir={part}", "resume=true"]
    get_logger("reproduce").info(f"[{step.name}] {' '.join(cmd[1:])}")
    if dry_run:
        return
    proc = subprocess.run(cmd, cwd=REPO, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"error: step '{step.name}' failed with exit status {proc.returncode}")


def run_benchmarks(out_root: Path, dry_run: bool = False) -> list[Path]:
    log = get_logger("reproduce")
    written = []
    for module in BENCHMARK_MODULES:
        log.info(f"[bench] python -m {module}")
        if dry_run:
            continue
        proc = subprocess.run([sys.executable, "-m", module], cwd=REPO, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"error: benchmark '{module}' failed with exit status {proc.returncode}")
        written.append(out_root / "bench" / module.split(".")[-1])
    return written


def index_entries(out_root: Path, mode: str) -> list[Path]:
    """Every table and figure under ``out_root/mode`` (relative to ``out_root``), step by step in ``STEPS``
    order, so that a run of some steps (``--only``) keeps the others' entries."""
    folder = out_root / mode
    entries: list[Path] = []
    for step in STEPS:
        mine = [folder / f"{step.name}.csv", folder / f"{step.name}.md"]
        mine += sorted(p for p in (folder / f"{step.name}_vs_paper").glob("*") if p.is_file())
        entries += [p.relative_to(out_root) for p in mine if p.is_file()]
    return entries


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m runners.reproduce", description=__doc__.splitlines()[0])
    ap.add_argument("mode", nargs="?", default="quick", choices=["quick", "full", "bench"])
    ap.add_argument("--only", nargs="*", default=None, help="step names to run (default: all)")
    ap.add_argument("--out", default=str(REPO / "results"), help="where tables go (default: results/)")
    ap.add_argument("--sweeps", default=str(REPO / "multirun" / "reproduce"), help="where the runs go")
    ap.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = ap.parse_args(argv)
    out_root, sweep_root = Path(args.out), Path(args.sweeps)
    if args.mode == "bench":
        run_benchmarks(out_root, args.dry_run)
        return 0
    names = [s.name for s in STEPS]
    unknown = sorted(set(args.only or []) - set(names))
    if unknown:
        print(f"error: --only: unknown step(s) {unknown}; steps are {names}", file=sys.stderr)
        return 2
    written: list[Path] = []
    for step in STEPS:
        if args.only is None or step.name in args.only:
            written += run_step(step, args.mode, out_root, sweep_root, args.dry_run)
    if not args.dry_run:
        index = "\n".join(f"- {p}" for p in index_entries(out_root, args.mode))
        atomic_write_text(
            out_root / args.mode / "INDEX.md",
            f"# Tables and figures written by `reproduce {args.mode}`\n\n{index}\n",
        )
        print(f"\nTables ({args.mode}) under {out_root / args.mode}:")
        for p in written:
            print(f"  {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
