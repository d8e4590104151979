"""Markdown tables in the study's layouts, from measured records.

Single-stage points pivot as the study's Tables 1-4 and 7: one row per method
(with its options), one column per level (ratio, N:M, bits, scheme). Two-stage
pipelines pivot as Tables 8-10: one row per level of the first stage, one
column per second stage. Each cell is the measured value; where a baseline
exists, its relative delta, and on a failure a mark with the verdict's word
(``✗ regressed``, ``✗ improved``: which way it went).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass

from tabulate import tabulate

from mpt_core.baselines import row_family
from mpt_core.spec import Spec, Stage


@dataclass(frozen=True)
class Cell:
    model: str
    dataset: str
    spec: str
    metric: str
    value: float
    baseline: float | None = None
    passed: bool | None = None
    outcome: str | None = None  # the verdict's word: which way a failed cell went


def place(spec_text: str) -> tuple[str, str, str]:
    """(table name, row label, column label) of a spec in the study's layouts."""
    spec = Spec.parse(spec_text)
    if spec.is_dense:
        return "dense", "dense", "dense"
    if len(spec.stages) == 1:
        stage = spec.stages[0]
        return stage.method, _without_level(stage), stage.level_str() or "-"
    first, *rest = spec.stages
    table = "+".join([first.method, *(stage.method for stage in rest)])
    return table, first.level_str(), "+".join(str(stage) for stage in rest)


def _without_level(stage: Stage) -> str:
    return str(Stage(stage.method, options=stage.options))


def format_cell(cell: Cell) -> str:
    if not math.isfinite(cell.value):
        text = "inf"
    else:
        text = f"{cell.value:.4g}" if cell.value >= 1000 else f"{cell.value:.4f}"
    if cell.baseline is not None and math.isfinite(cell.baseline) and math.isfinite(cell.value):
        text += f" ({100 * (cell.value / cell.baseline - 1):+.1f}%)"
    if cell.passed is False:
        text += f" ✗ {cell.outcome}" if cell.outcome else " ✗"
    return text


REPEATED_NOTE = (
    "A cell with values joined by ` / ` holds every record of that point in file order "
    "(measured more than once, or under several protocols)."
)


def tables(cells: list[Cell]) -> str:
    """One markdown table per (model, dataset, metric, family); the dense point joins each
    table of its setting as the first column, as the study's FP16 columns do."""
    groups: dict[tuple, list[Cell]] = defaultdict(list)
    dense: dict[tuple, list[Cell]] = defaultdict(list)
    for cell in cells:
        setting = (cell.model, cell.dataset, cell.metric)
        family = row_family(cell.spec, cell.metric)
        (dense[setting] if family == "dense" else groups[(*setting, family)]).append(cell)
    for setting in dense:
        if not any(key[:3] == setting for key in groups):
            groups[(*setting, "dense")] = []
    sections = []
    for (model, dataset, metric, family), group in sorted(groups.items()):
        table = _pivot(dense.get((model, dataset, metric), []) + group)
        sections.append(f"### {model} · {dataset} · {metric} · {family}\n\n{table}\n")
    if any(" / " in section for section in sections):
        sections.append(REPEATED_NOTE + "\n")
    return "\n".join(sections)


def _pivot(cells: list[Cell]) -> str:
    """The cells as one table; two records of one place show both values, never only
    the last."""
    rows: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    columns: list[str] = []
    for cell in cells:
        _, row, column = place(cell.spec)
        if column not in columns:
            columns.append(column)
        rows[row][column].append(format_cell(cell))
    columns.sort(key=_column_order)
    body = [
        [row, *(" / ".join(values.get(column, [])) for column in columns)]
        for row, values in rows.items()
    ]
    return tabulate(body, headers=["", *columns], tablefmt="github", disable_numparse=True)


def _column_order(label: str) -> tuple:
    """Dense first, then ratios ascending, N:M, bits descending, schemes by name."""
    if label == "dense":
        return (-1, 0.0, label)
    level = label.split("+")[0].split("[")[0]
    if ":" in level and not level.split(":")[0].isdigit():
        level = level.split(":", 1)[1]
    if re.fullmatch(r"\d+:\d+", level):
        return (1, 0.0, level)
    try:
        number = float(level)
    except ValueError:
        return (3, 0.0, label)
    return (0, number, label) if "." in level else (2, -number, label)


def summary_line(passed: int, failed: int, skipped: dict[str, int]) -> str:
    reasons = "; ".join(f"{count} {reason}" for reason, count in sorted(skipped.items()))
    total_skipped = sum(skipped.values())
    text = f"**{passed} passed, {failed} failed, {total_skipped} skipped**"
    return text + (f" ({reasons})" if reasons else "")
