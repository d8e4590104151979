"""Records of measurements and the JSONL store they are appended to.

Every record is written as one line, flushed and fsynced before the next point
starts, so a killed sweep loses at most the point in flight. Appends hold an exclusive
lock on the file (two sweeps on one ``--out`` interleave whole lines). A last line
without its newline is kept when it parses (the newline is added before the next append);
a torn one, the write a kill interrupted, is skipped by readers and moved aside to
``<file>.torn`` by the next append, never deleted, so a resumed sweep records every point
exactly once.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

from mpt_core.errors import ResultsError


@dataclass
class Record:
    model: str
    weights_hash: str
    spec: str
    dataset: str
    seqlen: int
    windows: int
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

    @property
    def key(self) -> tuple:
        return point_key(
            self.model, self.spec, self.dataset, self.seqlen, self.windows, self.metric
        )

    @property
    def collapsed(self) -> bool:
        return not math.isfinite(self.value)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, allow_nan=True)

    @classmethod
    def from_dict(cls, data: dict) -> Record:
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        return cls(**known)


def point_key(model: str, spec: str, dataset: str, seqlen: int, windows: int, metric: str) -> tuple:
    """What makes two records measurements of the same point: a sweep skips known keys."""
    return (model, spec, dataset, int(seqlen), int(windows), metric)


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
        Record.from_dict(json.loads(line.decode("utf-8")))
    except (UnicodeDecodeError, json.JSONDecodeError, TypeError, AttributeError):
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
        return Record.from_dict(json.loads(line.decode("utf-8")))
    except (UnicodeDecodeError, json.JSONDecodeError, TypeError, AttributeError) as error:
        raise ResultsError(
            f"{path}:{number} is not a valid mpt record ({type(error).__name__}); "
            "fix or delete that line, or write to a new --out file"
        ) from None


def known_keys(path: str | Path) -> set[tuple]:
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
