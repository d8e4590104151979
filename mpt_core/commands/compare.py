"""``mpt compare RUN_A RUN_B``: what moved between two runs, beside the versions that differ."""

from __future__ import annotations

import argparse

from tabulate import tabulate

from mpt_core.reporting.history import (
    DEFAULT_RTOL,
    load_run,
    moved,
    point_label,
    run_ptps,
    version_diff,
)


def register(subparsers) -> None:
    parser = subparsers.add_parser("compare", help="points and PTPs that moved between two runs")
    parser.add_argument("run_a", help="a run file of a history folder (the earlier run)")
    parser.add_argument("run_b", help="a run file of a history folder (the later run)")
    parser.add_argument("--rtol", type=float, default=DEFAULT_RTOL)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    a, b = load_run(args.run_a), load_run(args.run_b)
    versions = version_diff(a, b)
    change = ", ".join(f"{name} {old} → {new}" for name, (old, new) in versions.items())
    print(f"library versions: {change or 'identical'}")
    before, after = a.values(), b.values()
    rows = [
        [
            point_label(p),
            f"{before[p].value:.4f}",
            f"{after[p].value:.4f}",
            f"{after[p].value / before[p].value:.4f}",
        ]
        for p in sorted(set(before) & set(after))
        if moved(before[p], after[p], args.rtol)
    ]
    print(
        f"\n{len(rows)} points moved beyond {args.rtol:g} (and 2 standard errors)"
        + (f" with {change}" if change and rows else "")
    )
    if rows:
        print(tabulate(rows, headers=["point", "before", "after", "ratio"], tablefmt="github"))
    ptp_a, ptp_b = run_ptps(a), run_ptps(b)
    shifts = [
        [label, f"{ptp_a[label]:.3f}", f"{ptp_b[label]:.3f}"]
        for label in sorted(set(ptp_a) & set(ptp_b))
        if abs(ptp_b[label] - ptp_a[label]) > 1e-3
    ]
    for label, old, new in shifts:
        print(f"{change or 'same versions'} moved the {label} knee from {old} to {new}")
    return 0
