"""``mpt report``: the markdown tables of a results JSONL, in the study's layouts."""

from __future__ import annotations

import argparse
from pathlib import Path

from mpt_core import baselines
from mpt_core.errors import BaselineError, ResultsError
from mpt_core.harness import policy, row_checks
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
        raise ResultsError(f"results file {args.results} does not exist")
    records = read(args.results)
    if not records:
        raise ResultsError(f"{args.results} holds no records")
    rows = _baseline_rows(args.baselines) if args.baselines else {}
    cells = judged_cells(records, rows, baselines.BaselineRecords(), baselines.NoiseFloors())
    text = tables(cells)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    else:
        print(text)
    return 0


def _baseline_rows(path: str) -> dict[tuple, baselines.BaselineRow]:
    source = Path(path)
    rows = (
        baselines.load_dir(source, "cpu") if source.is_dir() else baselines.load_file(source, "cpu")
    )
    if problems := row_checks.errors(rows):  # a repeated row would silently keep the last
        raise BaselineError("; ".join(problems[:3]))
    return {_key(row): row for row in rows if row.has_value}  # a collapsed one is judged too


def _key(point) -> tuple:
    return (point.model, point.dataset, point.spec, point.metric)


def judged_cells(records: list, rows: dict, footprints, noise) -> list[Cell]:
    """Each record as a table cell, judged against its baseline row where it has one, beside
    the first dense record of its protocol."""
    dense = {_dense_key(r): r.value for r in reversed(records) if r.spec == "dense"}
    return [_cell(record, dense, rows, footprints, noise) for record in records]


def _dense_key(record) -> tuple:
    """What a record shares with the dense record it is judged beside."""
    return (record.model, record.dataset, record.metric, record.seqlen, record.windows)


def _cell(record, dense: dict, rows: dict, footprints, noise) -> Cell:
    """The record as a table cell; against a baseline row, judged as the pytest plugin
    judges it (``policy.judge_row``)."""
    row = rows.get(_key(record))
    if row is None:
        return Cell(record.model, record.dataset, record.spec, record.metric, record.value)
    dense_row = rows.get((record.model, record.dataset, "dense", record.metric))
    verdict = policy.judge_row(
        row,
        record,
        dense_measured=dense.get(_dense_key(record)),
        dense_baseline=dense_row.value if dense_row else None,
        baseline_record=footprints.of(row),
        noise=noise.of(row),
    )
    return Cell(
        record.model,
        record.dataset,
        record.spec,
        record.metric,
        record.value,
        row.value,
        verdict.passed,
        verdict.outcome,
    )
