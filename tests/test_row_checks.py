"""Baseline rows no test would judge rightly are named by file:line (issue #23, item 1).

The pytest side (one ``ERROR:`` line each, exit 4) is in tests/test_bad_inputs.py; here the
rules themselves, on small files, and the committed baselines against them.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from mpt_core import baselines
from mpt_core.errors import BaselineError
from mpt_core.families import ROW_FAMILIES
from mpt_core.harness import row_checks

ROOT = Path(__file__).resolve().parent.parent
HEADER = ",".join(baselines.HEADER)
CPU_FILE = f"# windows: 4\n# rtol: 0.0001\n{HEADER}\n"  # rows start on line 4


def _cpu_rows(path: Path, *rows: str) -> list[baselines.BaselineRow]:
    path.write_text(CPU_FILE + "".join(f"{row}\n" for row in rows))
    return baselines.load_file(path, "cpu")


def _row(spec: str, value: str = "30.0", dataset: str = "wikitext2") -> str:
    return f"m,{dataset},{spec},ppl,{value},,,,64,test"


def test_a_row_knows_its_line_past_the_comment_lines(tmp_path):
    rows = _cpu_rows(tmp_path / "quant.csv", _row("dense"), _row("rtn:4"))
    assert [row.where for row in rows] == [f"{tmp_path / 'quant.csv'}:{n}" for n in (4, 5)]
    with pytest.raises(BaselineError, match=r"quant.csv:5: could not convert"):
        _cpu_rows(tmp_path / "quant.csv", _row("dense"), _row("rtn:4", value="five"))


def test_a_baseline_file_that_is_not_utf8_is_one_error(tmp_path):
    path = tmp_path / "quant.csv"
    path.write_bytes(CPU_FILE.encode() + b"m,wiki\xfftext2,dense,ppl,30,,,,64,test\n")
    with pytest.raises(BaselineError, match=r"quant.csv: not UTF-8 text \(byte \d+\)"):
        baselines.load_file(path, "cpu")


def test_an_unknown_method_is_named_with_its_line(tmp_path):
    rows = _cpu_rows(tmp_path / "quant.csv", _row("dense"), _row("rtn:4+foo:0.5"))
    assert row_checks.errors(rows) == [
        f"{tmp_path / 'quant.csv'}:5: unknown method 'foo' (mpt methods lists them)"
    ]


def test_a_method_of_no_family_is_a_row_no_module_collects(tmp_path, monkeypatch):
    monkeypatch.delitem(baselines.METHOD_FAMILIES, "rtn")  # registered, but in no family
    rows = _cpu_rows(tmp_path / "lowrank.csv", _row("svd:0.1"), _row("rtn:4"))
    [error] = row_checks.errors(rows)
    assert error.startswith(f"{tmp_path / 'lowrank.csv'}:5: family 'unknown': no benchmarks")


def test_a_row_twice_in_one_file_names_both_lines(tmp_path):
    rows = _cpu_rows(tmp_path / "quant.csv", _row("rtn:4"), _row("dense"), _row("rtn:4", "31"))
    path = tmp_path / "quant.csv"
    assert row_checks.errors(rows) == [
        f"{path}:6: duplicate of {path}:4 (m-wikitext2-rtn:4 ppl): one point, one row"
    ]
    other_dataset = _cpu_rows(path, _row("rtn:4"), _row("rtn:4", dataset="ptb"))
    assert row_checks.errors(other_dataset) == []


def test_errors_past_a_screenful_are_counted(tmp_path):
    rows = _cpu_rows(tmp_path / "quant.csv", *(_row(f"foo:{n / 100}") for n in range(1, 26)))
    found = row_checks.errors(rows)
    assert len(found) == row_checks.MAX_LINES + 1
    assert found[-1] == f"... and {25 - row_checks.MAX_LINES} more rows like these"


def test_one_point_in_two_cpu_files_must_agree_within_its_tolerance(tmp_path):
    same = _cpu_rows(tmp_path / "quant.csv", _row("rtn:4"))
    same += _cpu_rows(tmp_path / "combined-x.csv", _row("rtn:4"))
    assert row_checks.errors(same) == [] and row_checks.conflicts(same) == []
    close = _cpu_rows(tmp_path / "combined-z.csv", _row("rtn:4", "30.002"))  # within 1e-4
    assert row_checks.conflicts(same + close) == []
    stale = same + _cpu_rows(tmp_path / "combined-y.csv", _row("rtn:4", "31.0"))
    [(row, line)] = row_checks.conflicts(stale)
    assert row.where == f"{tmp_path / 'combined-y.csv'}:4"
    assert f"is 31.0 here and 30.0 in {tmp_path / 'quant.csv'}:4, under one protocol" in line
    other_protocol = (tmp_path / "w8").mkdir() or tmp_path / "w8" / "quant.csv"
    other_protocol.write_text(f"# windows: 8\n{HEADER}\n{_row('rtn:4', '31.0')}\n")
    assert row_checks.conflicts(same + baselines.load_file(other_protocol, "cpu")) == []


def test_two_study_tables_may_print_one_point_differently():
    study = baselines.load_dir(ROOT / "baselines" / "study", "study")
    twice = [row for row in study if row.model == "llama2-7b" and row.spec == "sparsegpt:0.8"]
    assert {row.table for row in twice} == {"table2", "table9"}  # 50.1593 and 49.1943
    assert row_checks.errors(study) == [] and row_checks.conflicts(study) == []


def test_every_row_family_has_a_benchmarks_module():
    """The families ``row_checks`` accepts are those the benchmarks modules collect."""
    collected = set()
    for module in (ROOT / "benchmarks").glob("test_*.py"):
        for node in ast.parse(module.read_text()).body:
            if isinstance(node, ast.Assign) and node.targets[0].id == "MPT_FAMILIES":
                collected |= set(ast.literal_eval(node.value))
    assert collected == set(ROW_FAMILIES)


def test_the_committed_baselines_pass_and_a_collapsed_row_is_a_test():
    """Collecting both tiers: no error; the study's published nan (Table 2, magnitude at
    80%) is a test, judged in the collapsed regime; the empty cells are counted."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "benchmarks", "--collect-only", "-q", "-p",
         "no:randomly", "--mpt-tier", "all", "-k", "llama2-7b and magnitude"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    assert "test_ppl[llama2-7b-wikitext2-magnitude:0.8]" in result.stdout
    study = baselines.load_dir(ROOT / "baselines" / "study", "study")
    empty = sum(row.raw_value == "-" for row in study)
    assert f"; {empty} empty cells of the study ('-') are no tests" in result.stdout
