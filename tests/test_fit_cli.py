"""``mpt fit`` and ``mpt recommend``: tables on good input, one line and exit 2 on bad."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest

from mpt_core.analysis.curves import read_jsonl
from mpt_core.commands import fit, recommend
from mpt_core.errors import MptError

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "curves"


def mpt(*argv: str) -> int:
    """What ``mpt_core.cli.main`` does for these commands: MptError -> one line, exit 2."""
    parser = argparse.ArgumentParser(prog="mpt")
    subparsers = parser.add_subparsers(dest="command", required=True)
    fit.register(subparsers)
    recommend.register(subparsers)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except MptError as error:
        print(f"mpt: error: {error}")
        return 2


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
    ("argv", "message"),
    [
        (("empty.csv",), "empty.csv: empty file"),
        (("one_point.csv",), "too few points (1 distinct < 5"),
        (("nan_x.csv", "--x", "ratio", "--y", "ppl"), "x must be finite"),
        (
            ("xy.csv", "--x", "ratio", "--y", "loss"),
            "no column 'loss'; columns are method, ratio, ppl",
        ),
        (("xy.csv",), "not a baseline CSV; name its columns with --x and --y"),
        (("missing.csv",), "missing.csv: no such file"),
        (("synthetic.csv", "--metric", "acc"), "no curve for metric 'acc'"),
    ],
)
def test_bad_fit_input_gives_one_line_and_exit_2(argv, message, capsys) -> None:
    assert mpt("fit", str(FIXTURES / argv[0]), *argv[1:]) == 2
    out = capsys.readouterr().out
    assert out.startswith("mpt: error: ") and out.count("\n") == 1
    assert message in out


def test_recommend_prints_the_smallest_cell_within_budget(capsys) -> None:
    assert mpt("recommend", str(FIXTURES / "grid.csv"), "--max-ppl-increase", "5%") == 0
    out = capsys.readouterr().out
    assert "recommended: wanda:0.1+rtn:4  size 22.50% of FP16 (stated)" in out
    assert "inside the joint safe region: yes" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("grid.csv", "--max-ppl-increase", "five"), "write a percentage (5%) or a fraction"),
        (("grid.csv", "--max-ppl-increase=-5%"), "must be zero or more"),
        (("empty.csv", "--max-ppl-increase", "5%"), "empty file"),
        (("synthetic.csv", "--max-ppl-increase", "5%", "--metric", "acc"), "no points with"),
        (("one_point.csv", "--max-ppl-increase", "5%"), "no uncompressed ('dense') point"),
        (("xy.csv", "--max-ppl-increase", "5%"), "header 'method,ratio,ppl' is not"),
    ],
)
def test_bad_recommend_input_gives_one_line_and_exit_2(argv, message, capsys) -> None:
    assert mpt("recommend", str(FIXTURES / argv[0]), *argv[1:]) == 2
    out = capsys.readouterr().out
    assert out.startswith("mpt: error: ") and out.count("\n") == 1
    assert message in out


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
    assert mpt("fit", str(path)) == 2
    assert f"{path}:1: {message}" in capsys.readouterr().out


def test_a_schema_2_collapsed_value_reads_as_nan(tmp_path) -> None:
    record = json.loads(TINY_RECORD.read_text().splitlines()[0])
    collapsed = record | {"value": None, "status": "collapsed", "nonfinite": {"/value": "nan"}}
    path = tmp_path / "records.jsonl"
    path.write_text(json.dumps(collapsed) + "\n")
    assert math.isnan(read_jsonl(path)[0].value)
