"""Records of measurements and the JSONL store they are appended to.

Every record is written as one line, flushed and fsynced before the next point
starts, so a killed sweep loses at most the point in flight. Appends hold an exclusive
lock on the file (two sweeps on one ``--out`` interleave whole lines). A last line
without its newline is kept when it parses (the newline is added before the next append);
a torn one, the write a kill interrupted, is skipped by readers and moved aside to
``<file>.torn`` by the next append, never deleted, so a resumed sweep records every point
exactly once.

The line is standard JSON, schema 2 (``records.schema.json`` beside this file): a
non-finite number is ``null`` and its kind (``inf``, ``-inf``, ``nan``) is kept in
``nonfinite`` under its JSON pointer, so a record reads back bit for bit; ``status`` says
``ok`` or ``collapsed``; a task record also names its fields for what they hold
(``Record.named_fields``). Schema 1 (no ``schema`` field, ``NaN``/``Infinity`` literals)
reads to the same records (migration on read); files are never rewritten.
"""

from __future__ import annotations

import copy
import fcntl
import json
import math
import os
import platform
import subprocess
from dataclasses import MISSING, asdict, dataclass, field, fields
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

from mpt_core.errors import ResultsError, SpecError
from mpt_core.spec import Spec

SCHEMA = 2  # schema 1: no "schema" field; non-finite numbers written as NaN / Infinity
SCHEMA_FILE = Path(__file__).with_name("records.schema.json")
NONFINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}
# what schema 2 writes besides the Record's fields; the named fields are derived, checked on read
META_FIELDS = ("schema", "status", "nonfinite")
NAMED_FIELDS = ("task", "questions", "limit", "calibration_seqlen")
PERPLEXITY = "ppl"  # the windowed metric; every other metric is a task's (lm-eval)


class BadRecord(ValueError):
    """A JSON object that is not a record of a schema this mpt reads; says which field."""


@dataclass
class Record:
    model: str
    weights_hash: str
    spec: str
    dataset: str  # perplexity: the text corpus; a task record: the lm-eval task
    seqlen: int  # perplexity: the window length; a task record: the calibration length
    windows: int  # perplexity: windows evaluated; a task record: questions scored
    metric: str
    value: float
    stderr: float
    footprint: dict
    seconds: dict
    device: str
    dtype: str
    fingerprint: dict = field(default_factory=dict)
    settings: list = field(default_factory=list)
    versions: dict = field(default_factory=dict)
    git_sha: str = ""
    created: str = ""
    window_losses: list = field(default_factory=list)  # perplexity: each window's mean loss
    evaluation: str = ""  # windowed | llama-perplexity | lm-eval; "" in older records: see below
    memory: dict = field(default_factory=dict)  # peak bytes: host_rss_bytes, device_peak_bytes

    def __post_init__(self):
        # records written before the field measured perplexity by windows and tasks by lm-eval
        if not self.evaluation:
            self.evaluation = "windowed" if self.metric == PERPLEXITY else "lm-eval"

    @property
    def key(self) -> PointKey:
        return point_key(
            model=self.model,
            weights_hash=self.weights_hash,
            spec=self.spec,
            dataset=self.dataset,
            seqlen=self.seqlen,
            windows=self.windows,
            metric=self.metric,
            dtype=self.dtype,
            device=self.device,
        )

    @property
    def collapsed(self) -> bool:
        return not math.isfinite(self.value)

    @property
    def status(self) -> str:
        """``ok``, or ``collapsed`` for a value that is not finite (a diverged measurement:
        fits right-censor it, the verdict judges it in its collapsed regime)."""
        return "collapsed" if self.collapsed else "ok"

    def named_fields(self) -> dict:
        """A task record's key fields under the names of what they hold: ``task`` is
        ``dataset``, ``questions`` (scored) is ``windows``, ``calibration_seqlen`` is
        ``seqlen``, and ``limit`` the questions asked for per task (null: all). The key
        fields keep their names so that one key serves both kinds of record; a perplexity
        record's names already say what they hold."""
        if self.metric == PERPLEXITY:
            return {}
        return {
            "task": self.dataset,
            "questions": self.windows,
            "limit": self.fingerprint.get("limit"),
            "calibration_seqlen": self.seqlen,
        }

    def to_json(self) -> str:
        """One line of standard JSON, schema 2 (see the module docstring)."""
        nonfinite: dict[str, str] = {}
        data = _finite(asdict(self), "", nonfinite)
        data |= self.named_fields() | {"schema": SCHEMA, "status": self.status}
        if nonfinite:
            data["nonfinite"] = nonfinite
        return json.dumps(data, sort_keys=True, allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict) -> Record:
        """A record from its JSON object, of schema 1 or 2 (migration on read). A missing,
        unknown or mistyped field is a ``BadRecord`` naming it: nothing is dropped."""
        if not isinstance(data, dict):
            raise BadRecord("not a JSON object")
        schema = _schema_of(data)
        if schema >= 2:
            data = with_nonfinite(data)
        record = cls(**_record_fields(data, schema))
        if schema >= 2:
            _check_derived(record, data)
        return record


def _schema_of(data: dict) -> int:
    schema = data.get("schema", 1)
    if isinstance(schema, bool) or not isinstance(schema, int) or schema < 1:
        raise BadRecord(f"schema {schema!r} is not a version number")
    if schema > SCHEMA:
        raise BadRecord(f"schema {schema} is newer than this mpt reads ({SCHEMA}): upgrade mpt")
    return schema


# a Record field's annotation: the Python types its JSON value may have, and their JSON name
_TYPES = {
    "str": ((str,), "a string"),
    "int": ((int,), "an integer"),
    "float": ((int, float), "a number"),
    "dict": ((dict,), "an object"),
    "list": ((list,), "an array"),
}


def _record_fields(data: dict, schema: int) -> dict:
    """The Record's fields of ``data``, type-checked; ints where floats belong become floats."""
    known = {item.name: item for item in fields(Record)}
    extra = set(META_FIELDS + NAMED_FIELDS) if schema >= 2 else set()
    unknown = sorted(set(data) - set(known) - extra)
    if unknown:
        raise BadRecord(f"unknown field(s) {', '.join(unknown)} for schema {schema}")
    required = [name for name, item in known.items() if _required(item)]
    missing = [name for name in required if name not in data]
    if missing:
        raise BadRecord(f"missing field(s) {', '.join(missing)}")
    values = {name: data[name] for name in known if name in data}
    for name, value in values.items():
        kind = known[name].type
        types, noun = _TYPES[kind]
        if isinstance(value, bool) or not isinstance(value, types):
            raise BadRecord(f"{name} is {value!r}, not {noun}")
        if kind == "float":
            values[name] = float(value)
    if not all(_is_number(loss) for loss in values.get("window_losses", [])):
        raise BadRecord("window_losses holds something that is not a number")
    return values


def _required(item) -> bool:
    return item.default is MISSING and item.default_factory is MISSING


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_derived(record: Record, data: dict) -> None:
    """A schema-2 line's status and named fields must say what its own fields say."""
    if data.get("status") == "error":
        raise BadRecord("status 'error' (a measurement that failed) carries no value to read")
    expected = {"status": record.status, **record.named_fields()}
    for name in ("status", *NAMED_FIELDS):
        if data.get(name, "(absent)") != expected.get(name, "(absent)"):
            raise BadRecord(
                f"{name} is {data.get(name, '(absent)')!r}, but the record's fields say "
                f"{expected.get(name, '(absent)')!r}"
            )


def _finite(value, pointer: str, nonfinite: dict[str, str]):
    """``value`` with each non-finite float replaced by None, its kind kept in
    ``nonfinite`` under its JSON pointer (RFC 6901)."""
    if isinstance(value, float) and not math.isfinite(value):
        nonfinite[pointer] = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        return None
    if isinstance(value, dict):
        return {
            key: _finite(item, f"{pointer}/{_escape(key)}", nonfinite)
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_finite(item, f"{pointer}/{index}", nonfinite) for index, item in enumerate(value)]
    return value


def with_nonfinite(data: dict) -> dict:
    """A copy of a schema-2 JSON object with the numbers ``nonfinite`` names put back
    (schema 1 wrote them as literals: nothing to do)."""
    nonfinite = data.get("nonfinite", {})
    if not isinstance(nonfinite, dict):
        raise BadRecord("nonfinite is not an object of JSON pointers")
    data = copy.deepcopy(data)
    for pointer, kind in nonfinite.items():
        if kind not in NONFINITE:
            raise BadRecord(f"nonfinite {pointer!r} is {kind!r}, not one of {', '.join(NONFINITE)}")
        container, index = _locate(data, pointer)
        container[index] = NONFINITE[kind]
    return data


def _locate(data: dict, pointer: str) -> tuple:
    """The container and index a JSON pointer names; the value there must be null."""
    parts = [_unescape(part) for part in pointer.split("/")]
    if len(parts) < 2 or parts[0]:
        raise BadRecord(f"nonfinite {pointer!r} is not a JSON pointer into the record")
    container = data
    try:
        for part in parts[1:-1]:
            container = container[int(part) if isinstance(container, list) else part]
        index = int(parts[-1]) if isinstance(container, list) else parts[-1]
        held = container[index]
    except (KeyError, IndexError, ValueError, TypeError):
        raise BadRecord(f"nonfinite names {pointer!r}, which the record lacks") from None
    if held is not None:
        raise BadRecord(f"nonfinite names {pointer!r}, which holds {held!r}, not null")
    return container, index


def _escape(key: str) -> str:
    return str(key).replace("~", "~0").replace("/", "~1")


def _unescape(part: str) -> str:
    return part.replace("~1", "/").replace("~0", "~")


class PointKey(NamedTuple):
    """A point's whole identity: what makes two records measurements of the same point
    (a sweep skips known keys)."""

    model: str
    weights_hash: str
    spec: str  # canonical
    dataset: str
    seqlen: int
    windows: int
    metric: str
    dtype: str
    device: str  # the kind: "cuda", not "cuda:1"

    @property
    def setup(self) -> tuple:
        """The model as loaded and run, without the point (``setup_key``)."""
        return setup_key(self.model, self.weights_hash, self.seqlen, self.dtype, self.device)


def point_key(
    *,
    model: str,
    weights_hash: str,
    spec: str,
    dataset: str,
    seqlen: int,
    windows: int,
    metric: str,
    dtype: str,
    device: str,
) -> PointKey:
    """The key of a point. Schema-1 records carry every one of these fields (the first
    writer already required them), so their keys compare with new ones as they are; the
    spec is made canonical (``canonical_spec``) and the device reduced to its kind for both."""
    return PointKey(
        model,
        weights_hash,
        canonical_spec(spec),
        dataset,
        int(seqlen),
        int(windows),
        metric,
        dtype,
        device_kind(device),
    )


def canonical_spec(spec: str) -> str:
    """``str(Spec.parse(spec))``; a spec this grammar refuses (an older mpt's) as written:
    no spec a sweep measures equals it."""
    try:
        return str(Spec.parse(spec))
    except SpecError:
        return spec


def setup_key(model: str, weights_hash: str, seqlen: int, dtype: str, device: str) -> tuple:
    """What a point's key holds besides the point itself (spec, dataset, windows, metric)."""
    return (model, weights_hash, int(seqlen), dtype, device_kind(device))


def device_kind(device: str) -> str:
    """``cuda`` for ``cuda:1``: which card of a kind ran a point does not change it."""
    return str(device).split(":")[0]


def append(path: str | Path, record: Record) -> None:
    """Append one record durably (flush + fsync) under an exclusive lock, mending the last
    line first (``_mend_tail``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            _mend_tail(path, handle)
            handle.write((record.to_json() + "\n").encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _mend_tail(path: Path, handle) -> None:
    """A last line without its newline: complete it if it is a record, else move it to
    ``<file>.torn`` (appended, never overwritten) and cut it off."""
    handle.seek(0)
    data = handle.read()
    if not data or data.endswith(b"\n"):
        return
    start = data.rfind(b"\n") + 1
    tail = data[start:]
    if _parses(tail):
        handle.write(b"\n")
        return
    with open(f"{path}.torn", "ab") as torn:
        torn.write(tail + b"\n")
    handle.truncate(start)


def _parses(line: bytes) -> bool:
    try:
        parse_line(line)
    except ValueError:
        return False
    return True


def read(path: str | Path) -> list[Record]:
    """All complete records of a JSONL file.

    A last line without its newline counts when it parses; otherwise it is the torn write
    of an interrupted run and is skipped (``append`` moves it aside). Any other bad line
    is an error.
    """
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")
    records = []
    for number, line in enumerate(lines[:-1], start=1):
        if line.strip():
            records.append(_parse_line(path, number, line))
    if lines[-1].strip() and _parses(lines[-1]):
        records.append(_parse_line(path, len(lines), lines[-1]))
    return records


def _parse_line(path: Path, number: int, line: bytes) -> Record:
    try:
        return parse_line(line)
    except ValueError as error:
        raise ResultsError(
            f"{path}:{number} is not a valid mpt record ({_reason(error)}); "
            "fix or delete that line, or write to a new --out file"
        ) from None


def parse_line(line: bytes) -> Record:
    """One line of a records file, of any schema; a ValueError when it is not a record."""
    return Record.from_dict(json.loads(line.decode("utf-8")))


def _reason(error: ValueError) -> str:
    if isinstance(error, UnicodeDecodeError):
        return "not UTF-8 text"
    if isinstance(error, json.JSONDecodeError):
        return f"not JSON: {error.msg}"
    return str(error)


def known_keys(path: str | Path) -> set[PointKey]:
    return {record.key for record in read(path)}


# every library that can touch a point, when installed beside mpt (the venv backends name
# theirs in each stage's settings)
LIBRARIES = (
    "torch",
    "transformers",
    "tokenizers",
    "accelerate",
    "mpt-core",
    "gguf",
    "numpy",
    "llama-cpp-python",
    "lm-eval",
    "bitsandbytes",
)


@lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    return versions


@lru_cache(maxsize=1)
def git_sha() -> str:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return result.stdout.strip() if result.returncode == 0 else ""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
