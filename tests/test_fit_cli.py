"""``mpt fit`` and ``mpt recommend``: tables on good input, one line on bad: exit 2 for a
bad option, 3 for a file that cannot be fitted."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from mpt_core.analysis.curves import read_jsonl
from mpt_core.cli import main
from mpt_core.errors import DATA, USAGE

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "curves"


def mpt(*argv: str) -> int:
    return main(list(argv))


def test_fit_prints_one_ptp_row_per_curve(capsys) -> None:
    assert mpt("fit", str(FIXTURES / "synthetic.csv"), "--by", "method") == 0
    lines = capsys.readouterr().out.splitlines()
    knee = next(line for line in lines if " knee " in line)
    smooth = next(line for line in lines if " smooth " in line)
    assert "50.0%" in knee and "yes" in knee
    assert "no (dBIC" in smooth
    assert len(lines) == 4  # header, rule, two curves: the N:M row joins none


def test_fit_reads_a_plain_csv_grouped_by_a_column(capsys) -> None:
    argv = ("fit", str(FIXTURES / "xy.csv"), "--x", "ratio", "--y", "ppl", "--by", "method")
    assert mpt(*argv) == 0
    assert "50.0%" in capsys.readouterr().out


def test_fit_markdown_is_a_github_table(capsys) -> None:
    assert mpt("fit", str(FIXTURES / "synthetic.csv"), "--markdown") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("| model") and set(out[1]) <= {"|", "-", ":"}


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (("empty.csv",), DATA, "empty.csv: empty file"),
        (("one_point.csv",), DATA, "too few points (1 distinct < 5"),
        (("nan_x.csv", "--x", "ratio", "--y", "ppl"), DATA, "x must be finite"),
        (
            ("xy.csv", "--x", "ratio", "--y", "loss"),
            DATA,
            "no column 'loss'; columns are method, ratio, ppl",
        ),
        (("xy.csv",), DATA, "not a baseline CSV; name its columns with --x and --y"),
        (("missing.csv",), DATA, "missing.csv: no such file"),
        (("synthetic.csv", "--metric", "acc"), DATA, "no curve for metric 'acc'"),
        (("synthetic.csv", "--by", "model"), USAGE, "--by model: baseline files group by"),
    ],
)
def test_bad_fit_input_gives_one_line_and_its_exit_code(argv, code, message, capsys) -> None:
    assert mpt("fit", str(FIXTURES / argv[0]), *argv[1:]) == code
    err = capsys.readouterr().err
    assert err.startswith("mpt: error: ") and err.count("\n") == 1
    assert message in err


def test_recommend_prints_the_smallest_cell_within_budget(capsys) -> None:
    assert mpt("recommend", str(FIXTURES / "grid.csv"), "--max-ppl-increase", "5%") == 0
    out = capsys.readouterr().out
    assert "recommended: wanda:0.1+rtn:4  size 22.50% of FP16 (stated)" in out
    assert "inside the joint safe region: yes" in out


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (("grid.csv", "--max-ppl-increase", "five"), USAGE, "write a percentage (5%) or a"),
        (("grid.csv", "--max-ppl-increase=-5%"), USAGE, "must be zero or more"),
        (("empty.csv", "--max-ppl-increase", "5%"), DATA, "empty file"),
        (("synthetic.csv", "--max-ppl-increase", "5%", "--metric", "acc"), DATA, "no points"),
        (("one_point.csv", "--max-ppl-increase", "5%"), DATA, "no uncompressed ('dense') point"),
        (("xy.csv", "--max-ppl-increase", "5%"), DATA, "header 'method,ratio,ppl' is not"),
    ],
)
def test_bad_recommend_input_gives_one_line_and_its_exit_code(argv, code, message, capsys):
    assert mpt("recommend", str(FIXTURES / argv[0]), *argv[1:]) == code
    err = capsys.readouterr().err
    assert err.startswith("mpt: error: ") and err.count("\n") == 1
    assert message in err


def test_the_mpt_command_runs_fit_and_recommend() -> None:
    from mpt_core.cli import COMMANDS

    assert {"fit", "recommend"} <= set(COMMANDS)


TINY_RECORD = (
    Path(__file__).resolve().parent.parent / "baselines/cpu/tiny-llama/quant.records.jsonl"
)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("null", "value is null and no 'nonfinite' entry says why"),
        ("-Infinity", "value is -inf, which no metric can measure"),
    ],
)
def test_a_value_that_is_no_measurement_is_an_error_not_a_collapsed_point(
    tmp_path, capsys, value, message
) -> None:
    record = json.loads(TINY_RECORD.read_text().splitlines()[0])
    path = tmp_path / "records.jsonl"
    path.write_text(
        json.dumps(record | {"value": 0.0}).replace('"value": 0.0', f'"value": {value}')
    )
    assert mpt("fit", str(path)) == DATA
    assert f"{path}:1: {message}" in capsys.readouterr().err


def test_a_schema_2_collapsed_value_reads_as_nan(tmp_path) -> None:
    record = json.loads(TINY_RECORD.read_text().splitlines()[0])
    collapsed = record | {"value": None, "status": "collapsed", "nonfinite": {"/value": "nan"}}
    path = tmp_path / "records.jsonl"
    path.write_text(json.dumps(collapsed) + "\n")
    assert math.isnan(read_jsonl(path)[0].value)
