"""CPU-tier baselines produced by the harness itself: ``mpt baselines record``.

Each family has a fixed grid of specs (``baselines/cpu/grids/<family>.txt``),
measured on WikiText-2 and PTB test (seqlen 512, a fixed number of windows,
calibration on PTB valid). Records go to a resumable JSONL first; the CSV is
written from them with a header saying the command, the date and the library
versions.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from mpt_core.baselines import (
    DOWNSTREAM_METRICS,
    HEADER,
    BaselineRow,
    printed_value,
    task_limits,
)
from mpt_core.data import CALIBRATION_SPLITS
from mpt_core.errors import BaselineError, SpecError
from mpt_core.records import Record, now, read
from mpt_core.spec import Spec

CPU_DATASETS = ("wikitext2", "ptb")
GRIDS_DIR = Path("baselines/cpu/grids")


def read_grid(path: Path) -> list[str]:
    """The specs of a grid file (one a line, ``#`` comments), each checked to parse."""
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in path.parent.glob("*.txt"))) or "none"
        raise BaselineError(f"grid file {path} not found; grids in {path.parent}: {known}")
    specs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        text = line.split("#")[0].strip()
        if text:
            try:
                specs.append(str(Spec.parse(text)))
            except SpecError as error:
                raise BaselineError(f"{path}:{number}: {error}") from None
    return specs


def grid_datasets(path: Path) -> list[str]:
    """The datasets a grid is measured on: its ``# datasets: a,b`` line, else WikiText-2 and
    PTB. The study's combined tables are WikiText-2 only, and so are their CPU-tier grids."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# datasets:"):
            return [name.strip() for name in line.removeprefix("# datasets:").split(",")]
    return list(CPU_DATASETS)


def grid_rtol(path: Path) -> float | None:
    """The tolerance a grid declares for its rows (``# rtol: 0.001``): deterministic tiers
    set a tight one; None leaves the harness default."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# rtol:"):
            try:
                return float(line.removeprefix("# rtol:").split()[0])
            except (ValueError, IndexError):
                raise BaselineError(f"{path}: # rtol: must be a number") from None
    return None


def grid_tasks(path: Path) -> dict[str, int | None]:
    """A downstream grid's tasks and lm-eval limits: its ``# tasks: arc_easy=200,mmlu=5``
    line ({} for a perplexity grid)."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# tasks:"):
            return task_limits(line.removeprefix("# tasks:"), where=f"{path}: # tasks")
    return {}


def csv_text(records: list[Record], family: str, command: str, rtol: float | None = None) -> str:
    """The baseline CSV of ``records`` with its metadata lines."""
    first = records[0]
    versions = ", ".join(f"{name} {version}" for name, version in sorted(first.versions.items()))
    lines = [
        f"# command: {command}",
        f"# date: {now()}",
        f"# versions: {versions}",
        *(
            _accuracy_protocol(records)
            if first.metric in DOWNSTREAM_METRICS
            else _ppl_protocol(records)
        ),
        *([f"# rtol: {rtol:g}"] if rtol is not None else []),
    ]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(HEADER)
    for record in records:
        writer.writerow(_cells(record, family))
    return "\n".join(lines) + "\n" + buffer.getvalue()


def _ppl_protocol(records: list[Record]) -> list[str]:
    first = records[0]
    return [
        f"# windows: {first.windows}",
        f"# protocol: seqlen {first.seqlen}, {first.windows} windows, device {first.device}, "
        f"dtype {first.dtype}, {_calibration_words(records)}",
    ]


def _calibration_words(records: list[Record]) -> str:
    """The calibration the records' stages used: data set, window count and length."""
    used = sorted(
        {
            (stage["calib"], stage["nsamples"])
            for record in records
            for stage in record.settings
            if stage.get("calib") and stage.get("nsamples")
        }
    )
    if not used:
        return "no calibrated stage"
    seqlen = records[0].seqlen
    return "calibration " + "; ".join(
        f"{nsamples} x {seqlen} tokens of {calib} {CALIBRATION_SPLITS.get(calib, '')}".rstrip()
        for calib, nsamples in used
    )


def _accuracy_protocol(records: list[Record]) -> list[str]:
    """The ``# limits:`` line the plugin reads back, and the lm-eval protocol in words."""
    first = records[0]
    limits = {record.dataset: record.fingerprint.get("limit") for record in records}
    shots = {record.dataset: record.fingerprint.get("num_fewshot") for record in records}
    return [
        "# limits: " + ",".join(f"{task}={n}" if n else task for task, n in limits.items()),
        f"# protocol: lm-eval {first.versions.get('lm-eval', '?')} stock prompts on the local "
        f"files, shots {', '.join(f'{task} {n}' for task, n in shots.items())}; the first "
        f"N questions of each task (of each MMLU subject); {_calibration_words(records)}, "
        f"device {first.device}, dtype {first.dtype}",
    ]


def _cells(record: Record, family: str) -> list[str]:
    size = 100 * record.footprint["relative_size"]
    return [
        record.model,
        record.dataset,
        record.spec,
        record.metric,
        printed_value(record.value),
        printed_value(record.stderr),
        f"{size:.2f}",
        "pct_fp16",
        str(record.seqlen),
        f"mpt baselines record --family {family}",
    ]


def write_csv(
    records_path: Path,
    csv_path: Path,
    family: str,
    command: str,
    specs: list[str],
    rtol: float | None = None,
) -> int:
    """Write the CSV of the grid's points found in ``records_path``; returns the row count."""
    records = [record for record in read(records_path) if record.spec in specs]
    order = {spec: index for index, spec in enumerate(specs)}
    records.sort(
        key=lambda record: (record.dataset != "wikitext2", record.dataset, order[record.spec])
    )
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    csv_path.write_text(csv_text(records, family, command, rtol), encoding="utf-8")
    return len(records)


def rewrite_values(measured: list[tuple[BaselineRow, Record]]) -> None:
    """``--mpt-update-baselines``: replace value and stderr of the measured CPU-tier rows."""
    by_file: dict[str, dict[tuple, Record]] = {}
    for row, record in measured:
        by_file.setdefault(row.table, {})[(row.dataset, row.spec, row.metric)] = record
    for path in _files_of(measured):
        updates = by_file[path.stem]
        lines = path.read_text(encoding="utf-8").splitlines()
        path.write_text(
            "\n".join(_rewrite_line(line, updates) for line in lines) + "\n", encoding="utf-8"
        )


def _files_of(measured: list[tuple[BaselineRow, Record]]) -> set[Path]:
    return {Path(row.file) for row, _ in measured if row.file}


def _rewrite_line(line: str, updates: dict[tuple, Record]) -> str:
    if line.startswith("#") or line.startswith("model,"):
        return line
    cells = next(csv.reader([line]))
    record = updates.get((cells[1], cells[2], cells[3]))
    if record is None:
        return line
    cells[4], cells[5] = printed_value(record.value), printed_value(record.stderr)
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(cells)
    return buffer.getvalue()
