"""Records are standard, versioned JSON (#23): non-finite numbers as null with their kind
kept, a status, a schema version, named fields for task records, a JSON Schema that every
committed record validates against, and schema-1 files read to the same records."""

from __future__ import annotations

import json
import math
import subprocess
from dataclasses import MISSING, asdict, fields

import pytest
from test_results import make_record

from conftest import REPO
from mpt_core.analysis.curves import read_points
from mpt_core.errors import ResultsError
from mpt_core.records import (
    META_FIELDS,
    NAMED_FIELDS,
    SCHEMA,
    SCHEMA_FILE,
    Record,
    append,
    read,
)

jsonschema = pytest.importorskip("jsonschema")

COMMITTED = sorted([*REPO.glob("baselines/**/*.jsonl"), *REPO.glob("docs/**/*.jsonl")])
CPU_TIER = [path for path in COMMITTED if "baselines/cpu/" in path.as_posix()]
DEFAULTS = {
    item.name: item.default if item.default is not MISSING else item.default_factory()
    for item in fields(Record)
    if item.default is not MISSING or item.default_factory is not MISSING
}
VALIDATOR = jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text(encoding="utf-8")))


def rel(path) -> str:
    return path.relative_to(REPO).as_posix()


def strict_loads(line: str) -> dict:
    """``json.loads`` that refuses NaN / Infinity, as jq and other strict parsers do."""

    def refuse(constant: str):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(line, parse_constant=refuse)


def same(a, b) -> bool:
    """Equal, with nan equal to nan (at any depth)."""
    return marked(a) == marked(b)


def marked(value):
    """``value`` with each nan replaced by a string, so that == compares it."""
    if isinstance(value, float) and math.isnan(value):
        return "(nan)"
    if isinstance(value, dict):
        return {key: marked(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [marked(item) for item in value]
    return value


def nonfinite_record() -> Record:
    return make_record(
        value=math.inf,
        stderr=math.nan,
        window_losses=[2.5, math.inf, math.nan, -math.inf],
        footprint={"bytes": 1000.0, "bits_per_weight": math.nan, "sparsity": 0.5},
        seconds={"compress": math.inf, "evaluate": 0.2},
        settings=[{"stage": "magnitude:0.5", "a/b~c": math.inf}],
    )


def task_record(value: float = 0.51) -> Record:
    return make_record(
        "dense",
        value=value,
        dataset="arc_easy",
        metric="acc",
        windows=200,
        seqlen=512,
        fingerprint={"dataset": "arc_easy", "limit": 200, "num_fewshot": 0},
    )


def test_the_schema_is_a_valid_json_schema_naming_every_field():
    VALIDATOR.check_schema(VALIDATOR.schema)
    record_fields = {item.name for item in fields(Record)}
    assert set(VALIDATOR.schema["properties"]) == record_fields | set(META_FIELDS + NAMED_FIELDS)
    assert VALIDATOR.schema["properties"]["schema"] == {"const": SCHEMA}


def test_the_schema_ships_as_package_data():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert SCHEMA_FILE.name in project["tool"]["setuptools"]["package-data"]["mpt_core"]
    assert "jsonschema>=4" in project["project"]["optional-dependencies"]["test"]


def test_every_committed_jsonl_is_checked():
    try:
        listed = subprocess.run(
            ["git", "ls-files", "*.jsonl"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    assert set(listed) <= {rel(path) for path in COMMITTED}
    assert CPU_TIER


@pytest.mark.parametrize("path", COMMITTED, ids=rel)
def test_every_committed_record_validates_after_migration(path):
    for number, record in enumerate(read(path), start=1):
        data = strict_loads(record.to_json())
        errors = [error.message for error in VALIDATOR.iter_errors(data)]
        assert not errors, f"{rel(path)}, record {number}: {errors}"


@pytest.mark.parametrize("path", CPU_TIER, ids=rel)
def test_committed_schema_1_records_read_to_the_same_values(path):
    """Migration on read: each field equals the raw parse of the old line."""
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    records = read(path)
    assert len(records) == len(lines)
    for line, record in zip(lines, records, strict=True):
        raw = json.loads(line)  # the old format: NaN / Infinity literals allowed
        assert "schema" not in raw  # committed files are schema 1 and are never rewritten
        read_back = asdict(record)
        assert same({name: read_back[name] for name in raw}, raw)
        # an absent evaluation is what the old writer measured with
        implied = {"evaluation": "windowed" if raw["metric"] == "ppl" else "lm-eval"}
        absent = set(read_back) - set(raw)
        assert all(read_back[name] == implied.get(name, DEFAULTS[name]) for name in absent)


def test_the_writer_writes_standard_json_that_reads_back_bit_for_bit(tmp_path):
    path = tmp_path / "r.jsonl"
    written = [nonfinite_record(), make_record(), task_record(), task_record(value=math.nan)]
    for record in written:
        append(path, record)
    lines = path.read_text(encoding="utf-8").splitlines()
    for line in lines:
        data = strict_loads(line)
        assert not list(VALIDATOR.iter_errors(data)), line
        assert data["schema"] == SCHEMA
    assert all(same(asdict(a), asdict(b)) for a, b in zip(read(path), written, strict=True))
    back = read(path)[0]
    assert back.value == math.inf and math.isnan(back.stderr)
    assert back.window_losses[1:3] == [math.inf, back.window_losses[2]]
    assert math.isnan(back.window_losses[2]) and back.window_losses[3] == -math.inf


def test_non_finite_numbers_are_null_with_their_kind_and_status():
    data = strict_loads(nonfinite_record().to_json())
    assert (data["value"], data["stderr"], data["status"]) == (None, None, "collapsed")
    assert data["nonfinite"] == {
        "/value": "inf",
        "/stderr": "nan",
        "/window_losses/1": "inf",
        "/window_losses/2": "nan",
        "/window_losses/3": "-inf",
        "/footprint/bits_per_weight": "nan",
        "/seconds/compress": "inf",
        "/settings/0/a~1b~0c": "inf",  # RFC 6901 escapes
    }
    finite = strict_loads(make_record().to_json())
    assert finite["status"] == "ok" and "nonfinite" not in finite


def test_a_nan_value_stays_nan_and_collapsed(tmp_path):
    """Consumers (fit, verdict, report) read the same float as before the move to null."""
    path = tmp_path / "r.jsonl"
    append(path, make_record(value=math.nan))
    (back,) = read(path)
    assert math.isnan(back.value) and back.collapsed and back.status == "collapsed"


def test_schema_1_lines_with_nan_and_infinity_read_to_the_same_record(tmp_path):
    path = tmp_path / "old.jsonl"
    record = nonfinite_record()
    old_line = json.dumps(asdict(record), sort_keys=True, allow_nan=True)  # the old writer
    assert "Infinity" in old_line and "NaN" in old_line
    path.write_text(old_line + "\n")
    (back,) = read(path)
    assert same(asdict(back), asdict(record))


def test_task_records_name_their_fields_for_what_they_hold():
    data = strict_loads(task_record().to_json())
    assert (data["task"], data["questions"], data["limit"], data["calibration_seqlen"]) == (
        "arc_easy",
        200,
        200,
        512,
    )
    assert (data["dataset"], data["windows"], data["seqlen"]) == ("arc_easy", 200, 512)
    assert not set(NAMED_FIELDS) & set(strict_loads(make_record().to_json()))


def test_results_jsonl_for_fit_keeps_infinity(tmp_path):
    path = tmp_path / "r.jsonl"
    append(path, make_record("magnitude:0.9", value=math.inf))
    (point,) = read_points(path)
    assert point.value == math.inf


def schema_2(record: Record | None = None, **changes) -> str:
    data = json.loads((record or make_record()).to_json()) | changes
    return json.dumps({key: value for key, value in data.items() if value != "(drop)"})


@pytest.mark.parametrize(
    ("line", "named"),
    [
        (schema_2(value="high"), "value is 'high', not a number"),
        (schema_2(seqlen="abc"), "seqlen is 'abc', not an integer"),
        (schema_2(value=None), "value is None, not a number"),
        (schema_2(windows=True), "windows is True"),
        (schema_2(model="(drop)"), "missing field(s) model"),
        (schema_2(schema=3), "schema 3 is newer than this mpt reads (2): upgrade mpt"),
        (schema_2(schema="2"), "schema '2' is not a version number"),
        (schema_2(status="collapsed"), "status is 'collapsed', but the record's fields say 'ok'"),
        (schema_2(status="error"), "status 'error'"),
        (schema_2(status="(drop)"), "status is '(absent)'"),
        (schema_2(nonfinite={"/value": "inf"}), "nonfinite names '/value', which holds 12.5"),
        (schema_2(nonfinite={"/nothing": "inf"}), "nonfinite names '/nothing', which the record"),
        (schema_2(value=None, nonfinite={"/value": "big"}), "'big', not one of inf, -inf, nan"),
        (schema_2(nonfinite={"value": "inf"}), "'value' is not a JSON pointer"),
        (schema_2(nonfinite=["/value"]), "nonfinite is not an object"),
        (schema_2(task="arc_easy"), "task is 'arc_easy', but the record's fields say '(absent)'"),
        (schema_2(task_record(), questions=7), "questions is 7, but the record's fields say 200"),
        (schema_2(task_record(), limit="(drop)"), "limit is '(absent)'"),
        (schema_2(note="mine"), "unknown field(s) note for schema 2"),
        ('{"model": "x", "status": "ok"}', "unknown field(s) status for schema 1"),
    ],
)
def test_a_bad_record_is_one_error_naming_line_and_field(tmp_path, line, named):
    path = tmp_path / "r.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(ResultsError) as caught:
        read(path)
    assert f"{path}:1 " in str(caught.value) and named in str(caught.value)
