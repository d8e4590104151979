"""``mpt report``: a point recorded twice shows both values, never only the last; its
baselines are read as the harness reads them (a repeated row refused, a collapsed one judged)."""

from __future__ import annotations

from pathlib import Path

from mpt_core.cli import main
from mpt_core.errors import DATA
from mpt_core.reporting.report import REPEATED_NOTE, Cell, tables


def cell(spec: str, value: float) -> Cell:
    return Cell("tiny-llama", "wikitext2", spec, "ppl", value)


def test_one_record_a_point_fills_its_cell_alone():
    text = tables([cell("dense", 20.0), cell("magnitude:0.5", 30.0)])
    assert "| 20.0000 |" in text and "| 30.0000 |" in text
    assert REPEATED_NOTE not in text


def test_two_records_of_one_point_show_both_values_in_file_order():
    text = tables([cell("dense", 20.0), cell("magnitude:0.5", 30.0), cell("magnitude:0.5", 99.0)])
    assert "30.0000 / 99.0000" in text
    assert REPEATED_NOTE in text


TINY = Path(__file__).resolve().parent.parent / "baselines" / "cpu" / "tiny-llama"


def test_report_refuses_a_baseline_file_that_repeats_a_row(tmp_path, capsys):
    lines = (TINY / "quant.csv").read_text().splitlines()
    repeated = tmp_path / "quant.csv"
    repeated.write_text("\n".join([*lines, lines[-1]]) + "\n")
    argv = ["report", str(TINY / "quant.records.jsonl"), "--baselines", str(repeated)]
    assert main(argv) == DATA
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{repeated}:{len(lines) + 1}: duplicate of" in err


def test_report_judges_a_collapsed_baseline_row(tmp_path, capsys):
    lines = (TINY / "quant.csv").read_text().splitlines()
    header_end = next(i for i, line in enumerate(lines) if line.startswith("model,"))
    dense = next(line for line in lines[header_end:] if ",wikitext2,dense," in line).split(",")
    dense[4] = "nan"  # the baseline says collapsed; the measured dense point is finite
    path = tmp_path / "quant.csv"
    path.write_text("\n".join([*lines[: header_end + 1], ",".join(dense)]) + "\n")
    assert main(["report", str(TINY / "quant.records.jsonl"), "--baselines", str(path)]) == 0
    assert "left collapse" in capsys.readouterr().out
