"""``mpt report``: the markdown tables of a results JSONL, in the study's layouts."""

from __future__ import annotations

import argparse
from pathlib import Path

from mpt_core import baselines
from mpt_core.errors import MptError
from mpt_core.harness import verdict
from mpt_core.records import read
from mpt_core.reporting.report import Cell, tables


def register(subparsers) -> None:
    parser = subparsers.add_parser("report", help="markdown tables from results JSONL")
    parser.add_argument("results", help="JSONL written by mpt run/sweep or --mpt-results")
    parser.add_argument("--out", default=None, help="write here (default: stdout)")
    parser.add_argument(
        "--baselines",
        default=None,
        help="a baseline CSV or folder: adds each cell's delta and verdict",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not Path(args.results).is_file():
        raise MptError(f"results file {args.results} does not exist")
    records = read(args.results)
    if not records:
        raise MptError(f"{args.results} holds no records")
    known = _baseline_values(args.baselines) if args.baselines else {}
    cells = [_cell(record, known) for record in records]
    text = tables(cells)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    else:
        print(text)
    return 0


def _baseline_values(path: str) -> dict[tuple, float]:
    source = Path(path)
    rows = (
        baselines.load_dir(source, "cpu") if source.is_dir() else baselines.load_file(source, "cpu")
    )
    return {
        (row.model, row.dataset, row.spec, row.metric): row.value for row in rows if row.is_numeric
    }


def _cell(record, known: dict[tuple, float]) -> Cell:
    baseline = known.get((record.model, record.dataset, record.spec, record.metric))
    passed = None
    if baseline is not None:
        passed = verdict.check(record.value, baseline).passed
    return Cell(
        record.model, record.dataset, record.spec, record.metric, record.value, baseline, passed
    )
