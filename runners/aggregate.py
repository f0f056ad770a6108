"""``python -m runners.aggregate DIR... --by KEY... --out results/NAME``: tables and plots from run records.

Reads every complete ``result.json`` below the folders (single runs and multirun trees), groups by the
dotted config keys, averages over seeds, and writes ``NAME.csv``, ``NAME.md`` and, on request, bar plots
of metrics (``--bar``) and line plots of series (``--series``) as ``NAME_<metric>.png``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.aggregate import group, load_records, series_by_group, to_markdown, write_tables
from common.errors import SuiteError
from common.log import get_logger
from common.plots import bar_plot, line_plot


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m runners.aggregate", description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="+", help="run folders or multirun trees holding result.json files")
    ap.add_argument(
        "--by", nargs="*", default=[], help="dotted config keys to group by (e.g. placement.name)"
    )
    ap.add_argument("--metrics", nargs="*", default=None, help="metrics to keep (default: all)")
    ap.add_argument("--out", required=True, help="output prefix, e.g. results/moe_single_node")
    ap.add_argument("--bar", nargs="*", default=[], help="metrics to draw as bar plots")
    ap.add_argument("--series", nargs="*", default=[], help="series to draw as line plots (mean ± std)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log = get_logger("aggregate")
    try:
        records, problems = load_records(args.dirs)
        for p in problems:
            log.warning(f"skipped: {p}")
        if not records:
            raise SuiteError(f"no complete run record (result.json) under {', '.join(args.dirs)}")
        rows = group(records, args.by, args.metrics)
        out = Path(args.out)
        write_tables(rows, args.by, out)
        for metric in args.bar:
            if f"{metric}_mean" not in rows:
                raise SuiteError(f"--bar metric '{metric}' is in no run record")
            bar_plot(rows, args.by, metric, out.with_name(f"{out.name}_{metric}.png"))
        for name in args.series:
            curves = series_by_group(records, args.by, name)
            if not curves:
                raise SuiteError(f"--series '{name}' is in no run record")
            step = next((r.record.series_step.get(name) for r in records if name in r.record.series), None)
            line_plot(curves, out.with_name(f"{out.name}_{name}.png"), xlabel=step or "step", ylabel=name)
    except SuiteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(to_markdown(rows, args.by, args.metrics))
    log.info(f"{len(records)} runs in {len(rows)} groups")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
