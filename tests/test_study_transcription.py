"""baselines/study/tableN.csv equal the study's Tables 1-10 cell by cell.

The study markdown is found through $MPT_STUDY_SPEC or ../shared/spec/mpt-study.md next to the
repository; without it the tests that need it skip.
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections import Counter
from pathlib import Path

import pytest

from mpt_core.study.tables import (
    CSV_FIELDS,
    StudyTable,
    clean_cell,
    fill_down,
    level,
    parse_study,
    split_paren,
    split_pm,
    split_slash,
    study_rows,
)

REPO = Path(__file__).resolve().parents[1]
STUDY_DIR = REPO / "baselines" / "study"
TABLES = range(1, 11)
NUMBER = re.compile(r"nan|\d+(?:\.\d+)?")


def _study_path() -> Path:
    env = os.environ.get("MPT_STUDY_SPEC")
    return Path(env) if env else REPO.parent / "shared" / "spec" / "mpt-study.md"


@pytest.fixture(scope="module")
def study_tables() -> list[StudyTable]:
    path = _study_path()
    if not path.is_file():
        pytest.skip(f"study markdown not found at {path} (set MPT_STUDY_SPEC)")
    return parse_study(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def study_text(study_tables: list[StudyTable]) -> str:
    return _study_path().read_text(encoding="utf-8")


def read_csv(number: int) -> list[dict[str, str]]:
    with (STUDY_DIR / f"table{number}.csv").open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == CSV_FIELDS, f"table{number}.csv header"
        return list(reader)


def all_rows() -> list[dict[str, str]]:
    return [row for n in TABLES for row in read_csv(n)]


def tokens(cell: str) -> list[str]:
    """The printed numbers of a cell (``-`` for a missing one), digits as printed."""
    return ["-"] if cell == "-" else NUMBER.findall(cell)


def row_tokens(rows: list[dict[str, str]]) -> Counter[str]:
    return Counter(r[k] for r in rows for k in ("value", "stderr", "size") if r[k])


# --- parser units (no study file needed) -------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("****5.4610****", "5.4610"),
        ("<u>5.1352</u>", "5.1352"),
        ("**5.8619**", "5.8619"),
        ("*5.4739*", "5.4739"),
        (" **7.942 / 132.180** ", "7.942 / 132.180"),
        ("14.82 ¬± 0.11", "14.82 ± 0.11"),
        ("-", "-"),
    ],
)
def test_clean_cell(raw: str, clean: str) -> None:
    assert clean_cell(raw) == clean


def test_cell_splitters_and_levels() -> None:
    assert split_pm("14.82 ± 0.11") == ("14.82", "0.11")
    assert split_pm("-") == ("-", "")
    assert split_paren("6.1565 (100%)") == ("6.1565", "100")
    assert split_slash("90.00% / 5.1429") == ("90.00", "5.1429")
    assert [level(x) for x in ("0.1", "17%", "3", "2:4(0.5)")] == ["0.1", "0.17", "0.03", "2:4"]


def test_parse_finds_captioned_tables() -> None:
    text = "**Table 3: x**\n\n| M | 0.1 |\n|---|---|\n| Wanda | <u>5.1</u> |\n\n## next\n| a |\n"
    (table,) = parse_study(text)
    assert (table.number, table.header, table.rows) == (3, ["M", "0.1"], [["Wanda", "5.1"]])


# --- transcription -----------------------------------------------------------------------


def test_every_table_found(study_tables: list[StudyTable]) -> None:
    assert Counter(t.number for t in study_tables) == Counter({**dict.fromkeys(TABLES, 1), 7: 2})


@pytest.mark.parametrize("number", TABLES)
def test_csv_equals_mapping_of_study(study_text: str, number: int) -> None:
    assert read_csv(number) == study_rows(study_text)[number]


@pytest.mark.parametrize("number", TABLES)
def test_keys_unique(number: int) -> None:
    keys = Counter((r["model"], r["dataset"], r["spec"], r["metric"]) for r in read_csv(number))
    assert [k for k, n in keys.items() if n > 1] == []


def test_values_are_numbers_nan_or_dash() -> None:
    for row in all_rows():
        assert row["value"] in ("-", "nan") or math.isfinite(float(row["value"])), row
        assert row["seqlen"] == "unknown" or row["seqlen"].isdigit(), row
        assert bool(row["size"]) == bool(row["size_unit"]), row


def _expected_cells(table: StudyTable) -> dict[str, list[str]]:
    """source -> printed numbers, for every cell that is a CSV row (Tables 1-4, 7-10)."""
    name = f"Table {table.number}"
    if table.number == 7:
        name += " SVD-LLM" if "SVD-LLM" in table.header[0] else " ASVD"
    return {
        f"{name}, row {label}, col {col}": tokens(cell)
        for label, *cells in table.rows
        for col, cell in zip(table.header[1:], cells, strict=True)
    }


FIXED_WIDTH = {
    "QLoRA_NF4": "4bits",
    "QLoRA_FP4": "4bits",
    "LLM.int8()": "8bits",
    "SmothQuant w8a8": "8bits",
}


@pytest.mark.parametrize("number", [1, 2, 3, 4, 7, 8, 9, 10])
def test_grid_tables_cell_by_cell(study_tables: list[StudyTable], number: int) -> None:
    rows = read_csv(number)
    expected: dict[str, list[str]] = {}
    for table in (t for t in study_tables if t.number == number):
        expected |= _expected_cells(table)
    if number == 4:  # a fixed-width method's other columns name no point: all '-'
        skipped = {
            s
            for s in expected
            if any(f"row {m}, col " in s and not s.endswith(c) for m, c in FIXED_WIDTH.items())
        }
        assert [expected.pop(s) for s in sorted(skipped)] == [["-"]] * 12
    by_source: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_source.setdefault(row["source"], []).append(row)
    assert set(by_source) == set(expected)
    for source, cell in expected.items():
        assert row_tokens(by_source[source]) == Counter(cell), source


def test_table5_cell_by_cell(study_tables: list[StudyTable]) -> None:
    (table,) = (t for t in study_tables if t.number == 5)
    rows = {r["source"]: r for r in read_csv(5)}
    groups: dict[str, dict[str, list[str]]] = {}
    for model, indicator, *cells in fill_down(table.rows):
        groups.setdefault(model, {})[indicator] = cells
    seen = 0
    for model, group in groups.items():
        for i, col in enumerate(table.header[2:]):
            scheme, size = group["Quant Scheme"][i], group["Param(GB)"][i]
            has_point = scheme != "-" or col == "16-bit"
            spec = "dense" if scheme in ("FP16", "-") else f"gguf:{scheme}"
            for indicator in set(group) - {"Quant Scheme", "Param(GB)"}:
                cell = group[indicator][i]
                row = rows.get(f"Table 5, row {model} {indicator}, col {col}")
                if not has_point:
                    assert (row, cell, size) == (None, "-", "-"), (model, col)
                    continue
                seen += 1
                assert row is not None, (model, indicator, col)
                sized = tokens(cell) + ([] if size == "-" else tokens(size))
                assert row_tokens([row]) == Counter(sized), (model, indicator, col)
                assert (row["spec"], row["size"]) == (spec, "" if size == "-" else size)
    assert seen == len(rows)


def test_table6_cell_by_cell(study_tables: list[StudyTable]) -> None:
    (table,) = (t for t in study_tables if t.number == 6)
    rows = {r["source"]: r for r in read_csv(6)}
    assert len(rows) == len(table.rows)
    for model, scheme, ppl, size in fill_down(table.rows):
        row = rows[f"Table 6, row {model} {scheme}, col PPL"]
        assert row_tokens([row]) == Counter(tokens(ppl) + tokens(size))
        assert row["spec"] == ("dense" if scheme == "FP16" else f"gguf:{scheme}")


def test_specs_parse_with_project_parser() -> None:
    spec_mod = pytest.importorskip("mpt_core.spec", reason="mpt_core/spec.py not written yet")
    for spec in sorted({r["spec"] for r in all_rows()}):
        assert str(spec_mod.Spec.parse(spec)) == spec
