"""``mpt history DIR``: each point and each curve's PTP over the runs of a history folder."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from tabulate import tabulate

from mpt_core.commands.common import finite_float
from mpt_core.reporting.history import load_runs, point_label, run_ptps, step_changes
from mpt_core.verdict import DEFAULT_RTOL


def register(subparsers) -> None:
    parser = subparsers.add_parser("history", help="values and PTPs over recorded runs")
    parser.add_argument("directory", help="folder written by pytest --mpt-history DIR")
    parser.add_argument(
        "--rtol",
        type=finite_float,
        default=DEFAULT_RTOL,
        help="relative change that counts as a step",
    )
    parser.add_argument("--plot", default=None, help="write PPL- and PTP-over-runs figures here")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    runs = load_runs(args.directory)
    steps = {(point, after): word for point, _, after, word in step_changes(runs, args.rtol)}
    points = sorted({point for item in runs for point in item.values()})
    headers = ["point", *(f"run {i + 1}" for i in range(len(runs)))]
    body = [[point_label(point), *(_cell(item, point, steps) for item in runs)] for point in points]
    print(tabulate(body, headers=headers, tablefmt="github"))
    ptps = [run_ptps(item) for item in runs]
    labels = sorted({label for found in ptps for label in found})
    if labels:
        rows = [[label, *(_s0(found.get(label)) for found in ptps)] for label in labels]
        print("\nPTP (s0) per curve\n")
        print(tabulate(rows, headers=["curve", *headers[1:]], tablefmt="github"))
    print(
        f"\n{len(runs)} runs; {len(steps)} step changes (marked with the regression suite's "
        f"verdict where it fails against the run before: regressed, improved, ...; "
        f"rtol {args.rtol:g})"
    )
    print("runs: " + ", ".join(f"{i + 1}={item.name}" for i, item in enumerate(runs)))
    if args.plot:
        from mpt_core.reporting.history_plots import plot_history

        for path in plot_history(runs, points, labels, ptps, Path(args.plot)):
            print(f"wrote {path}")
    return 0


def _cell(item, point, steps) -> str:
    record = item.values().get(point)
    if record is None:
        return ""
    text = "inf" if not math.isfinite(record.value) else f"{record.value:.4f}"
    word = steps.get((point, item.name))
    return text + (f" ({word})" if word else "")


def _s0(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"
