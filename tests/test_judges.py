"""The judges agree: the pytest plugin, ``mpt report --baselines`` and ``mpt compare`` /
``mpt history`` give the same pass/fail, in the same words, on the same records (issues #19,
#23).

Over every committed CPU-tier grid, each baseline row's own record is re-judged as if it
had been measured again, unchanged and moved in the ways a library update moves a point
(a small drift, a large one, an improvement, NaN, a drift inside the collapse, a changed
footprint), by each judge's own code path.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from mpt_core import baselines
from mpt_core.commands.report import judged_cells
from mpt_core.harness import policy
from mpt_core.records import Record
from mpt_core.reporting.history import Run, _point, judged

CPU = Path(__file__).resolve().parent.parent / "baselines" / "cpu"
GRIDS = sorted(CPU.glob("*/*.csv"))
MOVES = {
    "unchanged": lambda v: v,
    "drift 1.5%": lambda v: v * 1.015,
    "drift 5%": lambda v: v * 1.05,
    "better 10%": lambda v: v * 0.9,
    "NaN": lambda v: math.nan,
    "x2.5": lambda v: v * 2.5,
    "x0.2": lambda v: v * 0.2,
    "footprint": lambda v: v,
}


def _moved(record: Record, move: str) -> Record:
    footprint = dict(record.footprint)
    if move == "footprint":
        footprint["bits_per_weight"] += 0.5
    return dataclasses.replace(record, value=MOVES[move](record.value), footprint=footprint)


PASSING = ("ok", "still collapsed")


def _judgements(path: Path, move: str) -> list[tuple[str, str, str, str]]:
    """(spec, the plugin's word, the report's, history's) for each row's moved record."""
    rows = [row for row in baselines.load_file(path, "cpu") if row.is_numeric]
    behind, noise = baselines.BaselineRecords(), baselines.NoiseFloors()
    pairs = [(row, behind.of(row)) for row in rows if row.metric == "ppl"]
    before = [record for _, record in pairs]
    after = [record if row.spec == "dense" else _moved(record, move) for row, record in pairs]
    runs = Run("before", tuple(before)), Run("after", tuple(after))
    by_key = {(r.model, r.dataset, r.spec, r.metric): r for r in rows}
    dense_after = {(r.dataset, r.seqlen, r.windows): r.value for r in after if r.spec == "dense"}
    reported = judged_cells(after, by_key, behind, noise)
    out = []
    for (row, _), measured, cell in zip(pairs, after, reported, strict=True):
        dense_row = by_key.get((row.model, row.dataset, "dense", row.metric))
        plugin = policy.judge_row(
            row,
            measured,
            dense_measured=dense_after.get((measured.dataset, measured.seqlen, measured.windows)),
            dense_baseline=dense_row.value if dense_row else None,
            baseline_record=behind.of(row),
            noise=noise.of(row),
        )
        assert cell.passed == plugin.passed
        rtol = policy.tolerance(row, None, noise.of(row))
        history = judged(*runs, _point(measured), rtol).outcome
        out.append((row.spec, plugin.outcome, cell.outcome, history))
    return out


@pytest.mark.parametrize("move", sorted(MOVES))
@pytest.mark.parametrize("path", GRIDS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_plugin_report_and_compare_agree_on_every_committed_point(path, move):
    judgements = _judgements(path, move)
    disagree = [j for j in judgements if len(set(j[1:])) > 1]
    assert not disagree, disagree[:5]
    if move == "unchanged":
        assert all(j[1] in PASSING for j in judgements), judgements[:5]
    if move in ("NaN", "footprint"):
        assert not any(j[1] in PASSING for j in judgements if j[0] != "dense")
    if move in ("better 10%", "x0.2"):  # an improvement is never called a regression
        assert not any(j[1] == "regressed" for j in judgements), judgements[:5]
    if move in ("drift 5%", "x2.5"):
        assert not any(j[1] in ("improved", "left collapse") for j in judgements)
