"""``mpt report``'s tables: a point recorded twice shows both values, never only the last."""

from __future__ import annotations

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
