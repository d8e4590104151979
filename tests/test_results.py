"""The JSONL record store: round trips, torn last lines, malformed lines."""

from __future__ import annotations

import json
import math

import pytest

from mpt_core.errors import MptError, ResultsError
from mpt_core.records import Record, append, known_keys, point_key, read


def make_record(spec: str = "magnitude:0.5", value: float = 12.5, **changes) -> Record:
    fields = dict(
        model="tiny-llama",
        weights_hash="ab" * 32,
        spec=spec,
        dataset="wikitext2",
        seqlen=64,
        windows=2,
        metric="ppl",
        value=value,
        stderr=0.25,
        footprint={"bytes": 1000.0, "relative_size": 0.5, "sparsity": 0.5},
        seconds={"compress": 0.1, "evaluate": 0.2},
        device="cpu",
        dtype="float32",
        fingerprint={"dataset": "wikitext2", "sha256": "00"},
        settings=[{"stage": spec, "scope": "layer"}],
        versions={"torch": "x"},
        git_sha="deadbeef",
        created="2025-01-01T00:00:00+00:00",
    )
    fields.update(changes)
    return Record(**fields)


def specs_of(path) -> list[str]:
    return [record.spec for record in read(path)]


def test_append_read_round_trip(tmp_path):
    path = tmp_path / "sub" / "results.jsonl"  # parent folders are created
    records = [make_record(f"magnitude:0.{i}", value=10.0 + i) for i in range(1, 4)]
    records.append(make_record("rtn:2", value=math.inf, stderr=math.inf))
    for record in records:
        append(path, record)
    back = read(path)
    assert back == records
    assert back[-1].collapsed and not back[0].collapsed
    assert path.read_text().count("\n") == len(records)
    assert all(line.startswith("{") for line in path.read_text().splitlines())


def test_read_of_a_missing_file_is_empty(tmp_path):
    assert read(tmp_path / "nothing.jsonl") == []
    assert known_keys(tmp_path / "nothing.jsonl") == set()


def key_of(spec: str, **changes):
    return make_record(spec, **changes).key


def test_record_key_and_known_keys(tmp_path):
    path = tmp_path / "r.jsonl"
    append(path, make_record("magnitude:0.1"))
    append(path, make_record("magnitude:0.2", seqlen=128))
    identity = dict(model="tiny-llama", weights_hash="ab" * 32, dataset="wikitext2", windows=2)
    identity |= dict(metric="ppl", dtype="float32", device="cpu")
    assert known_keys(path) == {
        point_key(spec="magnitude:0.1", seqlen=64, **identity),
        point_key(spec="magnitude:0.2", seqlen=128, **identity),
    }


@pytest.mark.parametrize(
    "change",
    [
        {"dtype": "bfloat16"},
        {"device": "cuda:0"},
        {"weights_hash": "cd" * 32},
        {"model": "smollm2-135m"},
        {"seqlen": 128},
        {"windows": 4},
        {"dataset": "ptb"},
        {"metric": "acc"},
    ],
    ids=lambda change: next(iter(change)),
)
def test_the_key_is_the_points_whole_identity(change):
    """A sweep resumes by this key: a point measured in another dtype, on another device
    kind, of other weights or by another protocol is not the same point (#23)."""
    assert key_of("magnitude:0.5", **change) != key_of("magnitude:0.5")


def test_the_key_ignores_which_card_and_how_the_spec_was_typed():
    assert key_of("rtn:4", device="cuda:0") == key_of("rtn:4", device="cuda:1")
    assert key_of("rtn:4[sym,group=64]") == key_of("rtn:4[group=64,sym]")
    assert key_of("rtn:4", device="cuda:1").device == "cuda"


def test_unknown_fields_are_an_error_naming_them(tmp_path):
    """Nothing read is dropped: a field no schema defines is refused, not ignored (#23)."""
    path = tmp_path / "r.jsonl"
    data = json.loads(make_record().to_json()) | {"added_later": 1}
    path.write_text(json.dumps(data) + "\n")
    with pytest.raises(ResultsError, match=f"{path}:1 .*unknown field.*added_later"):
        read(path)


@pytest.mark.parametrize("torn", ['{"model": "tiny', "{", '{"created": "2025-01-01T00:0'])
def test_torn_last_line_skipped_by_read_and_cut_by_next_append(tmp_path, torn):
    path = tmp_path / "r.jsonl"
    append(path, make_record("magnitude:0.1"))
    append(path, make_record("magnitude:0.2"))
    with path.open("a") as handle:
        handle.write(torn)  # a write interrupted by a kill
    assert specs_of(path) == ["magnitude:0.1", "magnitude:0.2"]

    append(path, make_record("magnitude:0.3"))
    assert specs_of(path) == ["magnitude:0.1", "magnitude:0.2", "magnitude:0.3"]
    expected = [make_record(f"magnitude:0.{i}").to_json() for i in (1, 2, 3)]
    assert path.read_text() == "\n".join(expected) + "\n"
    assert (tmp_path / "r.jsonl.torn").read_text() == torn + "\n"  # moved aside, not deleted


def test_torn_only_line_is_moved_aside_entirely(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"model": "ti')
    assert read(path) == []
    append(path, make_record("rtn:4"))
    assert path.read_text() == make_record("rtn:4").to_json() + "\n"
    assert (tmp_path / "r.jsonl.torn").read_text() == '{"model": "ti\n'


def test_a_whole_last_record_without_newline_is_read_and_kept(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(make_record("rtn:4").to_json())
    assert specs_of(path) == ["rtn:4"]
    append(path, make_record("rtn:3"))
    assert specs_of(path) == ["rtn:4", "rtn:3"]
    assert not (tmp_path / "r.jsonl.torn").exists()


def test_two_writers_on_one_file_leave_whole_lines_and_every_record(tmp_path):
    import multiprocessing

    path = tmp_path / "r.jsonl"
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_append_many, args=(path, w)) for w in range(2)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    specs = specs_of(path)
    assert sorted(specs) == sorted(f"rtn:{w}[group={i + 1}]" for w in range(2) for i in range(40))


def _append_many(path, writer: int) -> None:
    for index in range(40):
        append(path, make_record(f"rtn:{writer}[group={index + 1}]"))


def test_complete_last_record_without_newline_is_neither_lost_nor_duplicated(tmp_path):
    """A kill can land after a record's bytes but before its newline. Whatever read()
    reports must stay in the file: a record read() returns as done must survive the
    next append, or a resumed sweep would skip that point and then erase it."""
    path = tmp_path / "r.jsonl"
    append(path, make_record("magnitude:0.1"))
    with path.open("a") as handle:
        handle.write(make_record("magnitude:0.2").to_json())  # no "\n"
    seen = specs_of(path)

    append(path, make_record("magnitude:0.3"))
    after = specs_of(path)
    assert set(seen) <= set(after), f"read() reported {seen}, the next append left {after}"
    assert len(after) == len(set(after))


@pytest.mark.parametrize(
    "bad",
    ['{"model": "tiny', "not json", "[1, 2]", "42", "null", '{"model": "x"}'],
)
def test_malformed_middle_line_names_file_and_line(tmp_path, bad):
    path = tmp_path / "r.jsonl"
    append(path, make_record("magnitude:0.1"))
    with path.open("a") as handle:
        handle.write(bad + "\n")
    append(path, make_record("magnitude:0.3"))
    with pytest.raises(ResultsError) as caught:
        read(path)
    assert f"{path}:2" in str(caught.value)
    assert isinstance(caught.value, MptError)
    # the store refuses to append after it, too: nothing is silently dropped
    with pytest.raises(ResultsError):
        known_keys(path)


def test_malformed_complete_last_line_is_an_error_not_a_torn_write(tmp_path):
    """Only a line without its newline can be a torn write; a finished bad line is an error."""
    path = tmp_path / "r.jsonl"
    append(path, make_record("magnitude:0.1"))
    with path.open("a") as handle:
        handle.write("garbage\n")
    with pytest.raises(ResultsError, match=":2 "):
        read(path)


def test_blank_lines_are_ignored(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(
        "\n" + make_record("a:0.1").to_json() + "\n\n" + make_record("a:0.2").to_json() + "\n"
    )
    assert specs_of(path) == ["a:0.1", "a:0.2"]


def test_binary_file_is_a_results_error(tmp_path):
    """A file that is not text at all (a wrong --out) is bad input: ResultsError, not a crash."""
    path = tmp_path / "model.bin"
    path.write_bytes(make_record().to_json().encode() + b"\n\x81\xff\x00\xfe\n")
    with pytest.raises(ResultsError, match=str(path)):
        read(path)
