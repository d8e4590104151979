"""Compression time per method and level, from the records ``mpt baselines record`` wrote.

Usage: python scripts/compress_time_table.py RECORDS.jsonl ... [--since ISO-TIME] [--sweep]
Every record carries ``seconds.compress``: the wall time of compressing the model at that
point, calibration included. Only single-stage specs are tabulated (a pipeline's time is
its stages'); a point recorded more than once counts its fastest run; each method's row gives
the median over its levels and their range. ``--since`` keeps the
records created after a moment, e.g. after the machine had stopped running other jobs.
``--sweep`` instead sums what recording these files cost: each point's compression once
(its fastest run) and its evaluation on every dataset.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections import defaultdict

from tabulate import tabulate

from mpt_core.analysis.curves import without_level
from mpt_core.records import read
from mpt_core.spec import Spec, Stage


def fastest_times(paths: list[str], since: str | None) -> dict[str, dict[Stage, float]]:
    """method -> stage -> fastest compress seconds."""
    table: dict[str, dict[Stage, float]] = defaultdict(dict)
    for path in paths:
        for record in read(path):
            spec = Spec.parse(record.spec)
            if len(spec.stages) != 1 or spec.stages[0].method == "dense":
                continue
            if since is not None and record.created < since:
                continue
            stage = spec.stages[0]
            seconds = record.seconds["compress"]
            times = table[without_level(stage)]
            times[stage] = min(seconds, times.get(stage, seconds))
    return table


def sweep_seconds(paths: list[str]) -> tuple[int, float, float]:
    """(points, compress seconds, evaluate seconds) of recording every point once."""
    compress: dict[tuple, float] = {}
    evaluate: dict[tuple, float] = {}
    for path in paths:
        for record in read(path):
            point = (path, record.spec)
            compress[point] = min(record.seconds["compress"], compress.get(point, math.inf))
            run = (*point, record.dataset)
            evaluate[run] = min(record.seconds["evaluate"], evaluate.get(run, math.inf))
    return len(compress), sum(compress.values()), sum(evaluate.values())


def render(table: dict[str, dict[Stage, float]]) -> str:
    """One row per method: its median time over the levels measured, and the range."""
    body = []
    for method, times in sorted(table.items()):
        seconds = sorted(times.values())
        body.append(
            [
                f"`{method}`",
                ", ".join(
                    stage.level_str() or "-" for stage in sorted(times, key=lambda s: s.level_order)
                ),
                f"{statistics.median(seconds):.0f}",
                f"{seconds[0]:.0f}–{seconds[-1]:.0f}",
            ]
        )
    return tabulate(body, ["method", "levels", "median s", "range s"], tablefmt="github")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records", nargs="+")
    parser.add_argument("--since", help="only records created at or after this ISO time")
    parser.add_argument("--sweep", action="store_true", help="total cost of the files' points")
    args = parser.parse_args(argv)
    if args.sweep:
        points, compress, evaluate = sweep_seconds(args.records)
        print(
            f"{points} points: compression {compress / 60:.0f} min + evaluation "
            f"{evaluate / 60:.0f} min = {(compress + evaluate) / 60:.0f} min"
        )
        return 0
    table = fastest_times(args.records, args.since)
    if not table:
        print("no single-stage record in these files", file=sys.stderr)
        return 1
    print(render(table))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
