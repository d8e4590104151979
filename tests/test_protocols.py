"""Protocols as data (issue #21): every study row resolves to one complete protocol from
baselines/study/protocols.toml, a CPU-tier CSV's header states its own, and both are built
and checked by one parser."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from mpt_core import baselines, protocols
from mpt_core.engine import layerwise
from mpt_core.errors import BaselineError
from mpt_core.evaluate import batching
from mpt_core.harness import policy
from mpt_core.protocols import ProtocolFile, cpu_protocol, protocol_for

BASELINES = Path(__file__).resolve().parent.parent / "baselines"
STUDY = BASELINES / "study"
STUDY_FILE = STUDY / protocols.PROTOCOLS_FILE
STUDY_ROWS = baselines.load_dir(STUDY, "study")
CPU_ROWS = [
    row
    for folder in sorted((BASELINES / "cpu").iterdir())
    if folder.is_dir()
    for row in baselines.load_dir(folder, "cpu")
]


def _rows(table: str, spec_prefix: str = "", metric: str = "ppl") -> list:
    found = [
        row
        for row in STUDY_ROWS
        if row.table == table and row.spec.startswith(spec_prefix) and row.metric == metric
    ]
    assert found, (table, spec_prefix)
    return found


def test_the_file_covers_every_study_table():
    tables = {path.stem for path in STUDY.glob("table*.csv")}
    assert tables == set(ProtocolFile(STUDY_FILE).tables)


def test_every_study_row_resolves_to_one_complete_protocol():
    for row in STUDY_ROWS:
        protocol = protocol_for(row)
        given = dict(protocol.sources)
        for key in protocols._required(dataclasses.asdict(protocol)):
            assert given.get(key, "").startswith(protocols.SOURCE_PREFIXES), (row.test_id, key)


def test_the_seqlen_of_each_table_is_the_one_its_numbers_were_made_at():
    dense_7_8 = [row for table in ("table7", "table8") for row in _rows(table, "dense")]
    assert {protocol_for(row).seqlen for row in dense_7_8} == {2048}
    for spec in ("magnitude", "wanda", "sparsegpt", "admm"):
        assert {protocol_for(row).seqlen for row in _rows("table2", spec)} == {4096}
    assert {protocol_for(row).seqlen for row in _rows("table4")} == {2048}
    assert {protocol_for(row).seqlen for row in _rows("table7", "svd_llm")} == {512}
    assert {protocol_for(row).seqlen for row in _rows("table7", "asvd")} == {2048}


def test_tables_5_6_and_10_are_llama_perplexity_with_a_context():
    for table in ("table5", "table6", "table10"):
        found = {(protocol_for(row).evaluation, protocol_for(row).ctx) for row in _rows(table)}
        assert found == {("llama-perplexity", 512)}, table
    assert {protocol_for(row).evaluation for row in _rows("table5", metric="acc")} == {"lm-eval"}
    assert {protocol_for(row).evaluation for row in _rows("table2")} == {"windowed"}


def test_a_model_override_and_a_row_override_apply_in_order():
    gemma = [row for row in _rows("table6") if row.model.startswith("gemma3-")]
    assert {protocol_for(row).dtype for row in gemma} == {"bfloat16"}
    assert {protocol_for(row).dtype for row in _rows("table6", "gguf:Q2_K_M")} == {"float16"}
    awq = protocol_for(_rows("table4", "awq")[0])
    assert (awq.awq_group, awq.calib_length, awq.calib_nsamples) == (128, 512, 128)
    assert protocol_for(_rows("table4", "gptq")[0]).gptq_group is None  # one scale per row
    iquants = _rows("table5", "gguf:IQ")  # llama.cpp quantizes them only with an imatrix
    assert {protocol_for(row).calib_set for row in iquants} == {"c4"}
    assert {protocol_for(row).calib_set for row in _rows("table5", "gguf:Q")} == {"none"}


def test_a_study_csv_seqlen_must_agree_with_the_protocol():
    row = dataclasses.replace(_rows("table7", "svd_llm")[0], seqlen=2048)
    with pytest.raises(BaselineError, match="states seqlen 2048.*gives 512"):
        protocol_for(row)


# --- the file's rules, on small files -------------------------------------------------------

ENTRY = {
    "evaluation": "windowed",
    "seqlen": 512,
    "windows": 8,
    "dtype": "float32",
    "calib_set": "ptb",
    "calib_split": "validation",
    "calib_nsamples": "method",
    "calib_length": 512,
    "calib_sampler": "stream",
    "calib_seed": 0,
    "calib_batch": protocols.CPU_CALIB_BATCH,
    "gptq_group": "row",
    "awq_group": "row",
    "eval_batch": protocols.CPU_EVAL_BATCH,
}


def _toml_value(value) -> str:
    return str(value) if isinstance(value, int) else f'"{value}"'


def _write(tmp_path: Path, entry: dict, extra: str = "") -> Path:
    lines = ["[table1]", *(f"{key} = {_toml_value(value)}" for key, value in entry.items())]
    lines += ["[table1.sources]", *(f'{key} = "unknown: test"' for key in entry)]
    path = tmp_path / protocols.PROTOCOLS_FILE
    path.write_text("\n".join(lines) + "\n" + extra, encoding="utf-8")
    return path


def _study_row(path: Path, **fields) -> baselines.BaselineRow:
    base = dict(
        model="llama2-7b", dataset="wikitext2", spec="wanda:0.5", metric="ppl", raw_value="7",
        stderr=None, size=None, size_unit="", seqlen=None, source="", table="table1",
        tier="study", file=str(path.parent / "table1.csv"),
    )  # fmt: skip
    return baselines.BaselineRow(**(base | fields))


@pytest.mark.parametrize(
    "change, key",
    [
        ({"seqlen": "long"}, "seqlen"),
        ({"windows": 0}, "windows"),
        ({"dtype": "fp8"}, "dtype"),
        ({"calib_sampler": "documents"}, "calib_sampler"),
        ({"ctx": 512}, "ctx"),
        ({"unknown_key": 1}, "unknown_key"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_file_and_the_key(tmp_path, change, key):
    path = _write(tmp_path, ENTRY | change)
    with pytest.raises(BaselineError) as error:
        ProtocolFile(path)
    message = str(error.value)
    assert str(path) in message and key in message and "\n" not in message


def test_a_missing_key_or_source_is_one_line_naming_the_file_and_the_key(tmp_path):
    path = _write(tmp_path, {k: v for k, v in ENTRY.items() if k != "eval_batch"})
    with pytest.raises(BaselineError, match=r"protocols.toml \[table1\]: missing key 'eval_batch'"):
        ProtocolFile(path)
    path.write_text(path.read_text().replace('dtype = "unknown: test"\n', ""), encoding="utf-8")
    with pytest.raises(BaselineError, match=r"\[table1\]: sources.dtype must quote the study"):
        ProtocolFile(path)
    path.write_text(path.read_text() + 'seqlen = "a guess"\n', encoding="utf-8")  # dup key
    with pytest.raises(BaselineError, match="not valid TOML"):
        ProtocolFile(path)


def test_a_source_must_quote_the_study_or_say_unknown(tmp_path):
    path = _write(tmp_path, ENTRY)
    path.write_text(path.read_text().replace('seqlen = "unknown: test"', 'seqlen = "2K"'))
    with pytest.raises(BaselineError, match="sources.seqlen"):
        ProtocolFile(path)


def test_a_row_override_matches_metric_and_test_id_and_resets_what_it_replaces(tmp_path):
    override = """
[table1.rows."*-gguf:*"]
evaluation = "llama-perplexity"
ctx = 512
[table1.rows."*-gguf:*".sources]
evaluation = "unknown: test"
ctx = "unknown: test"
[table1.rows."acc:*"]
evaluation = "lm-eval"
[table1.rows."acc:*".sources]
evaluation = "unknown: test"
[table1.rows."*-wanda:*"]
calib_set = "none"
[table1.rows."*-wanda:*".sources]
calib_set = "unknown: test"
"""
    path = _write(tmp_path, ENTRY, override)
    file = ProtocolFile(path)
    llama = file.for_row(_study_row(path, spec="gguf:Q4_K_M"))
    assert (llama.evaluation, llama.ctx) == ("llama-perplexity", 512)
    both = file.for_row(_study_row(path, spec="gguf:Q4_K_M", metric="acc", dataset="mmlu"))
    assert (both.evaluation, both.ctx) == ("lm-eval", None)  # evaluation dropped the ctx
    bare = file.for_row(_study_row(path))
    assert (bare.calib_set, bare.calib_split, bare.calib_nsamples) == ("none", None, None)


def test_the_cpu_header_and_the_study_file_build_the_same_protocol(tmp_path):
    """One parser: equal fields give equal protocols whichever path built them."""
    cpu_row = next(row for row in CPU_ROWS if row.seqlen == 512 and row.windows == 8)
    from_header = cpu_protocol(cpu_row)
    from_file = ProtocolFile(_write(tmp_path, ENTRY)).for_row(_study_row(tmp_path / "x"))
    assert from_header == from_file  # sources say where each came from; they do not compare
    assert from_header.source("windows").endswith("# windows:")
    assert from_file.source("windows") == "unknown: test"


def test_a_bad_windows_header_is_one_line_naming_the_file(tmp_path):
    source = next(BASELINES.glob("cpu/tiny-llama/*.csv"))
    path = tmp_path / source.name
    path.write_text(source.read_text().replace("# windows: 4", "# windows: four"))
    with pytest.raises(BaselineError, match=rf"{path.name}: # windows: windows = 'four'"):
        baselines.load_file(path, "cpu")


# --- the CPU tier keeps its protocol ----------------------------------------------------------


def test_the_cpu_tier_is_measured_as_before():
    """seqlen from the row, windows from the file (default 8), --mpt-windows wins."""
    assert CPU_ROWS
    for row in CPU_ROWS:
        expected = (row.model, row.seqlen or 512, row.windows or 8)
        assert policy.row_protocol(row, None) == expected
        assert policy.row_protocol(row, 4) == (*expected[:2], 4)


def test_the_cpu_protocol_states_the_code_it_runs():
    assert protocols.CPU_CALIB_BATCH == layerwise.CALIBRATION_BATCH
    assert batching.CPU_BATCH == protocols.CPU_EVAL_BATCH
    assert cpu_protocol(CPU_ROWS[0]).calib_set == "ptb"


def test_the_study_rows_load_their_checkpoint_at_the_protocol_seqlen():
    row = _rows("table7", "svd_llm")[0]
    assert policy.row_protocol(row, None) == ("meta-llama/Llama-2-7b-hf", 512, None)


def _first_study_row(table: str, prefix: str):
    return next(row for row in STUDY_ROWS if row.table == table and row.spec.startswith(prefix))


def test_a_study_row_calibrates_as_its_protocol_says_unless_its_spec_says_otherwise():
    from mpt_core.pipeline import plan
    from mpt_core.spec import Spec

    row = _first_study_row("table2", "sparsegpt")
    point = policy.measured_point(row, None, None)
    settings = point.plan().stages[0].settings
    protocol = protocol_for(row)
    assert (settings["calib"], settings["calib_split"]) == ("c4", "train")
    assert (settings["nsamples"], settings["calib_length"]) == (128, protocol.calib_length)
    stated = plan(Spec.parse("sparsegpt:0.5[nsamples=8,calib=ptb]"), dict(point.defaults))
    assert (stated.stages[0].settings["nsamples"], stated.stages[0].settings["calib"]) == (
        8,
        "ptb",
    )
    awq = policy.measured_point(_first_study_row("table4", "awq"), None, None).plan()
    assert awq.stages[0].settings["group"] == 128  # llm-awq's q_group_size (protocols.toml)


def test_the_cpu_tier_keeps_its_calibration_defaults():
    row = next(row for row in CPU_ROWS if row.spec.startswith("sparsegpt"))
    settings = policy.measured_point(row, None, None).plan().stages[0].settings
    assert "calib_length" not in settings and settings["nsamples"] == 32


def test_calibration_windows_take_the_protocols_length_and_split(tmp_path, monkeypatch):
    from mpt_core.errors import DataError
    from mpt_core.models import byte_tokenizer
    from mpt_core.pipeline import Calibration

    (tmp_path / "ptb").mkdir()
    (tmp_path / "ptb" / "ptb.valid.txt").write_text("the valid text " * 400, encoding="utf-8")
    monkeypatch.setenv("MPT_DATA_DIR", str(tmp_path))
    calibration = Calibration(byte_tokenizer(), seqlen=64)
    settings = {"calib": "ptb", "nsamples": 2, "seed": 0}
    assert calibration.windows(settings | {"calib_length": 32}).shape == (2, 32)
    assert calibration.windows(settings).shape == (2, 64)
    with pytest.raises(DataError, match="ptb"):
        calibration.windows(settings | {"calib_split": "train"})  # no PTB train here: no swap


def test_command_line_overrides_replace_the_protocol_and_land_in_the_point():
    import torch

    overrides = policy.Overrides(seqlen=128, dtype="bfloat16", calib_nsamples=16)
    for row in (_first_study_row("table2", "sparsegpt"), CPU_ROWS[0]):
        point = policy.measured_point(row, None, None, "sparsegpt:0.5", overrides)
        assert (point.seqlen, point.dtype) == (128, torch.bfloat16)
        assert point.plan().stages[0].settings["nsamples"] == 16
