"""``mpt baselines record``: produce the CPU-tier baseline CSVs with the harness itself."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from mpt_core import progress
from mpt_core.baselines import DOWNSTREAM_METRICS, task_limits
from mpt_core.commands.common import add_model_arguments, describe, open_session
from mpt_core.commands.run import describe_score
from mpt_core.errors import BaselineError
from mpt_core.harness.baseline_record import (
    GRIDS_DIR,
    grid_datasets,
    grid_rtol,
    grid_tasks,
    read_grid,
    write_csv,
)
from mpt_core.records import append, known_keys, read
from mpt_core.spec import Spec


def register(subparsers) -> None:
    parser = subparsers.add_parser("baselines", help="record CPU-tier baseline tables")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    record = actions.add_parser("record", help="measure a family's grid and write its CSV")
    add_model_arguments(record)
    record.add_argument("--family", required=True, help="a grid: quant, unstructured, semi, ...")
    record.add_argument(
        "--grid", default=None, help="grid file (default: baselines/cpu/grids/<family>.txt)"
    )
    record.add_argument(
        "--datasets",
        default=None,
        help="comma list (default: the grid's '# datasets:' line, else wikitext2,ptb)",
    )
    record.add_argument(
        "--tasks",
        default=None,
        help="accuracy through lm-eval instead of perplexity: arc_easy=200,mmlu=5,... "
        "(task=limit; default: the grid's '# tasks:' line)",
    )
    record.add_argument(
        "--out", default=None, help="CSV path (default: baselines/cpu/<model>/<family>.csv)"
    )
    record.add_argument(
        "--records",
        default=None,
        help="resumable JSONL of the measurements (default: beside the CSV)",
    )
    record.set_defaults(func=run_record, dataset=None)
    noise = actions.add_parser(
        "noise", help="re-measure a CSV's points under float-order perturbations (noise floors)"
    )
    add_model_arguments(noise)
    noise.add_argument("--csv", required=True, help="a CPU-tier baseline CSV of that model")
    noise.add_argument(
        "--specs", default=None, help="only these specs (comma list; default: every row)"
    )
    noise.add_argument(
        "--datasets", default=None, help="only these datasets (comma list; default: every row)"
    )
    noise.set_defaults(func=run_noise, dataset=None)


def run_noise(args: argparse.Namespace) -> int:
    """Write ``<csv>.noise.txt``: each point's spread over threads 1/2 and calibration
    batch 1/8 (``mpt_core.harness.noise``)."""
    from mpt_core.harness.noise import measure_noise

    csv_path = Path(args.csv)
    if not csv_path.is_file():
        raise BaselineError(f"--csv {csv_path} does not exist")
    specs = _comma_set(args.specs)
    datasets = _comma_set(args.datasets)

    def keep(row) -> bool:
        return (specs is None or row.spec in specs) and (
            datasets is None or row.dataset in datasets
        )

    path = measure_noise(open_session(args), csv_path, args.windows, keep)
    print(f"wrote {path}")
    return 0


def run_record(args: argparse.Namespace) -> int:
    """Measure the grid's missing points; the CSV is rewritten after every point, so an
    interrupted recording leaves a valid baseline file of what it measured."""
    out = Path(args.out or f"baselines/cpu/{args.model}/{args.family}.csv")
    records_path = Path(args.records or out.with_suffix(".records.jsonl"))
    grid = Path(args.grid) if args.grid else GRIDS_DIR / f"{args.family}.txt"
    specs = read_grid(grid)
    rtol = grid_rtol(grid)
    datasets = (
        [name.strip() for name in args.datasets.split(",") if name.strip()]
        if args.datasets
        else grid_datasets(grid)
    )
    command = "mpt " + " ".join(shlex.quote(arg) for arg in sys.argv[1:])
    tasks = task_limits(args.tasks, where="--tasks") if args.tasks else grid_tasks(grid)
    session = open_session(args)
    if tasks:
        return _record_tasks(session, specs, tasks, records_path, out, args.family, command)
    done = known_keys(records_path)
    for spec in progress.each(specs, f"baselines {args.family}"):
        missing = [
            dataset
            for dataset in datasets
            if session.point_key(spec, dataset, args.windows) not in done
        ]
        if not missing:
            continue
        for record in session.measure_datasets(Spec.parse(spec), missing, args.windows):
            append(records_path, record)
            progress.write(describe(record))
        write_csv(records_path, out, args.family, command, specs, rtol)
    count = write_csv(records_path, out, args.family, command, specs, rtol)
    print(f"wrote {count} rows to {out}")
    return 0


def _comma_set(text: str | None) -> set[str] | None:
    """A comma list as a set of canonical specs or names; None when not given."""
    if text is None:
        return None
    return {str(Spec.parse(part)) if ":" in part else part for part in _split(text)}


def _split(text: str) -> list[str]:
    """Split at the commas outside brackets (``rtn:4[group=64,sym]`` stays whole)."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    return [part for part in [*parts, current.strip()] if part]


def _record_tasks(session, specs, tasks, records_path, out, family, command) -> int:
    """The downstream grid: every spec scored on every task at its limit, resumable. Each
    task compresses anew, so that an interrupted MMLU run loses no ARC record."""
    done = {
        (record.spec, record.dataset, record.fingerprint.get("limit"))
        for record in read(records_path)
        if record.metric in DOWNSTREAM_METRICS and record.key.setup == session.setup
    }
    for spec in progress.each(specs, f"baselines {family}"):
        missing = {task: n for task, n in tasks.items() if (spec, task, n) not in done}
        for task, limit in missing.items():
            for record in session.measure_tasks(Spec.parse(spec), {task: limit}):
                append(records_path, record)
                progress.write(describe_score(record))
            write_csv(records_path, out, family, command, specs)
    count = write_csv(records_path, out, family, command, specs)
    print(f"wrote {count} rows to {out}")
    return 0
