"""``mpt compare RUN_A RUN_B``: what moved between two runs, beside the versions that differ.

Each point of the later run is judged with the earlier run as its baseline, by the same
verdict as the pytest plugin (``mpt_core.verdict``). ``--fail-on moved`` exits 1 when any
point or knee moved, ``--fail-on regressed`` only when a point got worse: a CI step can use
it after a library update.
"""

from __future__ import annotations

import argparse

from tabulate import tabulate

from mpt_core.commands.common import finite_float
from mpt_core.reporting.history import (
    judged,
    load_run,
    point_label,
    protocol_diff,
    run_ptps,
    version_diff,
)
from mpt_core.verdict import DEFAULT_RTOL

WORSE = ("regressed", "footprint changed", "recovery below gate")


def register(subparsers) -> None:
    parser = subparsers.add_parser("compare", help="points and PTPs that moved between two runs")
    parser.add_argument("run_a", help="a run file of a history folder (the earlier run)")
    parser.add_argument("run_b", help="a run file of a history folder (the later run)")
    parser.add_argument("--rtol", type=finite_float, default=DEFAULT_RTOL)
    parser.add_argument(
        "--fail-on",
        choices=("moved", "regressed"),
        default=None,
        help="exit 1 when a point or knee moved (moved) or a point got worse (regressed)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    a, b = load_run(args.run_a), load_run(args.run_b)
    differs = protocol_diff(a, b)
    if differs:
        print(
            f"protocol differs: {', '.join(differs)}: the runs measured different points, "
            "so no move is attributed to a library version; compare runs of one protocol"
        )
        return 1
    versions = version_diff(a, b)
    change = ", ".join(f"{name} {old} → {new}" for name, (old, new) in versions.items())
    print(f"library versions: {change or 'identical'}")
    before, after = a.values(), b.values()
    verdicts = {p: judged(a, b, p, args.rtol) for p in sorted(set(before) & set(after))}
    rows = [
        [
            point_label(p),
            f"{before[p].value:.4f}",
            f"{after[p].value:.4f}",
            f"{verdict.ratio:.4f}",
            verdict.outcome,
        ]
        for p, verdict in verdicts.items()
        if not verdict.passed
    ]
    print(
        f"\n{len(rows)} points moved (the regression suite's verdict, rtol {args.rtol:g})"
        + (f" with {change}" if change and rows else "")
    )
    if rows:
        headers = ["point", "before", "after", "ratio", "verdict"]
        print(tabulate(rows, headers=headers, tablefmt="github"))
    ptp_a, ptp_b = run_ptps(a), run_ptps(b)
    shifts = [
        [label, f"{ptp_a[label]:.3f}", f"{ptp_b[label]:.3f}"]
        for label in sorted(set(ptp_a) & set(ptp_b))
        if abs(ptp_b[label] - ptp_a[label]) > 1e-3
    ]
    for label, old, new in shifts:
        print(f"{change or 'same versions'} moved the {label} knee from {old} to {new}")
    return _exit_code(args.fail_on, [v.outcome for v in verdicts.values()], bool(shifts))


def _exit_code(fail_on: str | None, outcomes: list[str], knee_moved: bool) -> int:
    if fail_on == "moved" and (
        knee_moved or any(o not in ("ok", "still collapsed") for o in outcomes)
    ):
        return 1
    if fail_on == "regressed" and any(outcome in WORSE for outcome in outcomes):
        return 1
    return 0
