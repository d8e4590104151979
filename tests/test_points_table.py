"""scripts/points_table.py: the README's Table-5/6-style tables of recorded points."""

from __future__ import annotations

from pathlib import Path

import pytest
from scripts_loader import load_script

from mpt_core.records import Record, append


def record(spec: str, dataset: str, value: float, megabytes: float) -> Record:
    footprint = {"bytes": megabytes * 1e6, "relative_size": megabytes / 200, "bits_per_weight": 4.5}
    return Record("m", "h", spec, dataset, 64, 4, "ppl", value, 0.5, footprint, {}, "cpu", "f32")


def write(tmp_path: Path) -> Path:
    path = tmp_path / "r.jsonl"
    for item in [
        record("gguf:Q4_K_M", "wikitext2", 31.5, 103.7),
        record("dense", "wikitext2", 30.1, 200.0),
        record("gguf:Q4_K_M", "ptb", 88.0, 103.7),
        record("gguf:Q4_K_M+rtn:4", "wikitext2", 1.0, 50.0),
        record("gguf:Q4_K_M", "wikitext2", 31.6, 103.7),
    ]:
        append(path, item)
    return path


def test_columns_largest_first_latest_record_wins_pipelines_left_out(tmp_path):
    script = load_script("points_table")
    lines = script.table(script.latest([str(write(tmp_path))]), None).splitlines()
    assert [cell.strip() for cell in lines[0].split("|")[2:4]] == ["`dense`", "`gguf:Q4_K_M`"]
    assert "31.6 ± 0.5" in lines[2] and "31.5" not in lines[2]
    assert lines[3].split("|")[2].strip() == "-"  # dense was not measured on PTB
    assert "103.7" in lines[4] and "51.8" in lines[5]
    assert "rtn" not in "\n".join(lines)


def test_specs_choose_and_order_the_columns_missing_ones_dash(tmp_path):
    script = load_script("points_table")
    text = script.table(script.latest([str(write(tmp_path))]), ["gguf:Q2_K", "gguf:Q4_K_M"])
    header, _, wikitext, *_ = text.splitlines()
    assert [cell.strip() for cell in header.split("|")[2:4]] == ["`gguf:Q2_K`", "`gguf:Q4_K_M`"]
    assert wikitext.split("|")[2].strip() == "-"


def test_method_columns_dense_then_ratios_then_nm_other_options_apart(tmp_path):
    path = tmp_path / "r.jsonl"
    for spec in (
        "dsnot:0.5[init=wanda]",
        "dense",
        "dsnot:2:4[init=wanda]",
        "dsnot:0.1[init=wanda]",
    ):
        append(path, record(spec, "wikitext2", 50.0, 100.0))
    append(path, record("dsnot:0.3[init=sparsegpt]", "wikitext2", 50.0, 100.0))
    script = load_script("points_table")
    columns = script.method_columns(script.latest([str(path)]), "dsnot[init=wanda]")
    assert columns == [
        "dense",
        "dsnot:0.1[init=wanda]",
        "dsnot:0.5[init=wanda]",
        "dsnot:2:4[init=wanda]",
    ]


def test_one_table_per_method_option(tmp_path, capsys):
    path = write(tmp_path)
    append(path, record("gguf:Q2_K", "wikitext2", 41.0, 86.4))
    script = load_script("points_table")
    assert script.main([str(path), "--method", "gguf", "--method", "rtn"]) == 0
    gguf, rtn = capsys.readouterr().out.split("\n\n`rtn`")
    assert gguf.startswith("`gguf`:") and "`gguf:Q2_K`" in gguf and "`gguf:Q4_K_M`" in gguf
    assert rtn == ": no point recorded yet\n"


def test_levels_layout_methods_as_rows_union_of_levels_as_columns(tmp_path, capsys):
    path = tmp_path / "r.jsonl"
    for spec, dataset, value in (
        ("dense", "wikitext2", 30.1),
        ("wanda:0.7", "wikitext2", 1420.4),
        ("wanda:2:4", "wikitext2", 216.8),
        ("admm:0.5", "wikitext2", 64.2),
        ("admm:0.5", "ptb", 99.0),
        ("wanda:0.5", "ptb", 147.0),
    ):
        append(path, record(spec, dataset, value, 100.0))
    script = load_script("points_table")
    argv = [str(path), "--levels", "wikitext2", "--method", "wanda", "--method", "admm"]
    assert script.main(argv) == 0
    caption, _, header, _, wanda, admm = capsys.readouterr().out.splitlines()
    assert caption == "PPL (WikiText-2; dense 30.1 ± 0.5):"
    assert [cell.strip() for cell in header.split("|")[1:-1]] == ["method", "0.5", "0.7", "2:4"]
    assert [cell.strip() for cell in wanda.split("|")[1:-1]] == ["`wanda`", "-", "1420", "216.8"]
    assert [cell.strip() for cell in admm.split("|")[1:-1]] == ["`admm`", "64.2", "-", "-"]


def test_levels_without_methods_is_a_usage_error(tmp_path, capsys):
    script = load_script("points_table")
    with pytest.raises(SystemExit) as stop:
        script.main([str(write(tmp_path)), "--levels", "wikitext2"])
    assert stop.value.code == 2
    assert "--levels needs the methods of its rows" in capsys.readouterr().err
