"""A verdict says which way a point went: regressed (worse beyond tolerance), improved
(better beyond tolerance: fails too, and says to re-record the baseline), moved (a PTP);
in the verdict's message, the session summary, the markdown tables, ``mpt compare`` and
``mpt history`` (issue #23: an improvement was labelled "REGRESSION")."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest
from test_results import make_record

from mpt_core.cli import main
from mpt_core.harness.outputs import terminal_summary
from mpt_core.records import append
from mpt_core.reporting.history import Run, step_changes
from mpt_core.reporting.report import Cell, format_cell
from mpt_core.verdict import check

RE_RECORD = "re-record the baseline"


@pytest.mark.parametrize(
    ("measured", "baseline", "higher_is_better"),
    [(9.0, 10.0, False), (0.50, 0.40, True), (600.0, 5000.0, False)],
    ids=["lower ppl", "higher accuracy", "ppl further from the collapse"],
)
def test_an_improvement_says_improved_and_to_re_record(measured, baseline, higher_is_better):
    verdict = check(
        measured, baseline, dense_baseline=0.6 if higher_is_better else 50.0,
        higher_is_better=higher_is_better,
    )  # fmt: skip
    assert verdict.outcome == "improved" and not verdict.passed and verdict.improved
    assert verdict.message.startswith(f"improved beyond tolerance ({RE_RECORD}): measured")
    assert "regress" not in verdict.message.lower()


def test_leaving_the_collapse_is_an_improvement_too():
    verdict = check(20.0, 400.0, dense_measured=5.0, dense_baseline=5.0)
    assert verdict.outcome == "left collapse" and verdict.improved
    assert "improved beyond tolerance" in verdict.message and RE_RECORD in verdict.message


@pytest.mark.parametrize(("measured", "higher_is_better"), [(11.0, False), (9.0, True)])
def test_a_regression_says_regressed_and_nothing_about_re_recording(measured, higher_is_better):
    verdict = check(measured, 10.0, higher_is_better=higher_is_better)
    assert verdict.outcome == "regressed" and not verdict.improved
    assert verdict.message.startswith("regressed beyond tolerance: measured")
    assert RE_RECORD not in verdict.message and "improv" not in verdict.message


def test_a_passing_verdict_reads_as_before():
    assert check(10.1, 10.0).message.startswith("ok: measured 10.1000 vs baseline 10.0000")


def summary_lines(verdict) -> list[str]:
    row = SimpleNamespace(test_id="tiny-llama-wikitext2-magnitude:0.5", table="unstructured")
    state = SimpleNamespace(collected_rows=1, verdicts=[(row, verdict)], skips=Counter())
    config = SimpleNamespace(getoption=lambda name: None, stash={})
    lines: list[str] = []
    terminal_summary(lines.append, state, config)
    return lines


def test_the_session_summary_names_the_direction_and_the_remedy():
    improved = summary_lines(check(9.0, 10.0))
    assert "1 improved" in improved[1]
    assert improved[2].lstrip().startswith("IMPROVED tiny-llama-wikitext2-magnitude:0.5")
    assert RE_RECORD in improved[2] and "REGRESS" not in "\n".join(improved)
    regressed = summary_lines(check(11.0, 10.0))
    assert regressed[2].lstrip().startswith("REGRESSED") and RE_RECORD not in regressed[2]


def test_a_failed_table_cell_says_which_way():
    assert format_cell(Cell("m", "d", "s", "ppl", 9.0, 10.0, False, "improved")) == (
        "9.0000 (-10.0%) ✗ improved"
    )
    assert format_cell(Cell("m", "d", "s", "ppl", 11.0, 10.0, False, "regressed")).endswith(
        "✗ regressed"
    )
    assert format_cell(Cell("m", "d", "s", "ppl", 10.0, 10.0, True, "ok")) == "10.0000 (+0.0%)"


def test_history_marks_each_step_with_its_direction(tmp_path, capsys):
    runs = [Run("run-1", (make_record(value=10.0),)), Run("run-2", (make_record(value=9.0),))]
    assert [step[3] for step in step_changes(runs)] == ["improved"]
    for run in runs:
        append(tmp_path / f"{run.name}.jsonl", run.records[0])
    assert main(["history", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "9.0000 (improved)" in out and "(regressed)" not in out
