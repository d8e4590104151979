"""Baseline tables (CSV): the rows a measurement is judged against.

Every baseline file has the header
``model,dataset,spec,metric,value,stderr,size,size_unit,seqlen,source``;
lines starting with ``#`` carry metadata (``# windows: 8``, ``# command: ...``). A value
is a number, ``nan`` or ``inf`` (a collapsed point: kept and judged in the collapsed regime),
or ``-``: a cell the study left empty, read but never a test. Errors name ``file:line``.
Study tables (``baselines/study``) are the GPU tier; harness-produced tables
(``baselines/cpu/<model>``) are the CPU tier.

The verdict a measurement gets against a row is ``mpt_core.verdict``.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, replace
from pathlib import Path

from mpt_core.errors import BaselineError
from mpt_core.families import FILE_FAMILIES
from mpt_core.protocols import parse_field
from mpt_core.spec import Spec

HEADER = (
    "model",
    "dataset",
    "spec",
    "metric",
    "value",
    "stderr",
    "size",
    "size_unit",
    "seqlen",
    "source",
)

# Families of every method the study names (implemented or not), so that rows of
# methods not implemented yet still land in the right test module and skip there.
METHOD_FAMILIES = {
    **dict.fromkeys(
        ("magnitude", "wanda", "sparsegpt", "ria", "admm", "dsnot", "owl", "besa"), "unstructured"
    ),
    **dict.fromkeys(
        ("llm_pruner", "flap", "sleb", "slicegpt", "shortgpt", "depth", "loraprune", "sheared"),
        "structured",
    ),
    **dict.fromkeys(("rtn", "gptq", "awq", "gguf", "nf4", "fp4", "int8", "smoothquant"), "quant"),
    **dict.fromkeys(("svd", "asvd", "svd_llm", "losparse", "lillama", "modegpt"), "lowrank"),
}


DOWNSTREAM_METRICS = ("acc", "acc_norm")


@dataclass(frozen=True)
class BaselineRow:
    model: str
    dataset: str
    spec: str
    metric: str
    raw_value: str
    stderr: float | None
    size: float | None
    size_unit: str
    seqlen: int | None
    source: str
    table: str
    tier: str  # "study" (GPU tier) or "cpu"
    windows: int | None = None
    file: str = ""
    line: int = 0  # the row's line in its file
    limit: int | None = None  # accuracy rows: lm-eval's limit (None: every question)
    rtol: float | None = None  # the file's declared tolerance (``# rtol:``), if any
    min_recovery: float | None = None  # the file's recovery gate (``# min_recovery:``)

    @property
    def value(self) -> float | None:
        """The number, nan for a published nan, None for a missing cell ('-')."""
        return None if self.raw_value == "-" else float(self.raw_value)

    @property
    def is_numeric(self) -> bool:
        return self.value is not None and math.isfinite(self.value)

    @property
    def has_value(self) -> bool:
        """A number, finite or not (a collapsed point); False for an empty cell ('-')."""
        return self.value is not None

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    @property
    def family(self) -> str:
        family = row_family(self.spec, self.metric)
        if family != "dense":
            return family
        # A dense row is the reference point of its own table (a CPU-tier file is one family).
        table_family = self.table.split("-")[0]  # CPU-tier files: <family>[-<methods>].csv
        return table_family if self.tier == "cpu" and table_family in FILE_FAMILIES else "quant"

    @property
    def test_id(self) -> str:
        return f"{self.model}-{self.dataset}-{self.spec}"


def row_family(spec_text: str, metric: str) -> str:
    """The test module a row belongs to: downstream, speed, combined or a method family."""
    if metric in DOWNSTREAM_METRICS:
        return "downstream"
    if metric == "tokens_per_s":
        return "speed"
    spec = Spec.parse(spec_text)
    families = {METHOD_FAMILIES.get(stage.method, "unknown") for stage in spec.stages}
    if len(families) > 1:
        return "combined"
    if spec.is_dense:
        return "dense"
    if spec.stages[0].level_kind == "nm":
        return "semi"
    return families.pop()


def load_file(path: str | Path, tier: str) -> list[BaselineRow]:
    """Rows of one baseline CSV; a malformed file raises BaselineError naming file:line."""
    path = Path(path)
    if not path.is_file():
        raise BaselineError(f"baseline file {path} does not exist")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise BaselineError(f"{path}: not UTF-8 text (byte {error.start})") from None
    meta = _metadata(lines)
    # each CSV line with its line in the file: errors name file:line past the # lines
    numbered = [(number, line) for number, line in enumerate(lines, 1) if not line.startswith("#")]
    reader = csv.reader(line for _number, line in numbered)
    header = tuple(next(reader, ()))
    if header != HEADER:
        raise BaselineError(f"{path}: header must be {','.join(HEADER)}; found {','.join(header)}")
    windows = _declared_windows(meta, path)
    rows = [_row(path, numbered[reader.line_num - 1][0], cells, tier, windows) for cells in reader]
    for key in ("rtol", "min_recovery"):
        if key in meta:
            value = _declared_number(key, meta[key], path)
            rows = [replace(row, **{key: value}) for row in rows]
    limits = task_limits(meta.get("limits", ""), where=f"{path}: # limits")
    return [replace(row, limit=limits.get(row.dataset)) for row in rows] if limits else rows


def _declared_windows(meta: dict[str, str], path: Path) -> int | None:
    """The file's ``# windows:`` count, parsed as a protocol's windows are (one parser:
    ``mpt_core.protocols``); None when the file states none."""
    if "windows" not in meta:
        return None
    windows = parse_field("windows", meta["windows"], f"{path}: # windows")
    if windows is None:
        raise BaselineError(f"{path}: # windows: {meta['windows']!r}: state a count")
    return windows


def _declared_number(key: str, text: str, path: Path) -> float:
    """A number a file declares for its rows (``# rtol: 0.001``, ``# min_recovery: 0.95``)."""
    try:
        number = float(text.split()[0])
    except (ValueError, IndexError):
        number = math.nan
    if not (math.isfinite(number) and number >= 0):
        raise BaselineError(f"{path}: # {key}: {text!r} must be a number, 0 or more")
    return number


def task_limits(text: str, where: str = "tasks") -> dict[str, int | None]:
    """``arc_easy=200,mmlu=5,arc_challenge`` -> {task: limit}; a bare task means every
    question. A downstream baseline file states its limits in a ``# limits:`` line."""
    limits: dict[str, int | None] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        task, _, limit = item.partition("=")
        if limit and not (limit.strip().isdigit() and int(limit) > 0):
            raise BaselineError(f"{where}: {item!r}: the limit must be a positive integer")
        limits[task.strip()] = int(limit) if limit else None
    return limits


def _metadata(lines: list[str]) -> dict[str, str]:
    meta = {}
    for line in lines:
        if line.startswith("#") and ":" in line:
            key, _, value = line[1:].partition(":")
            meta[key.strip()] = value.strip()
    return meta


def _row(path: Path, number: int, cells: list[str], tier: str, windows: int | None) -> BaselineRow:
    where = f"{path}:{number}"
    if len(cells) != len(HEADER):
        raise BaselineError(f"{where}: expected {len(HEADER)} cells, found {len(cells)}")
    data = dict(zip(HEADER, cells, strict=True))
    try:
        Spec.parse(data["spec"])
        row = BaselineRow(
            model=data["model"],
            dataset=data["dataset"],
            spec=data["spec"],
            metric=data["metric"],
            raw_value=data["value"],
            stderr=_optional_float(data["stderr"]),
            size=_optional_float(data["size"]),
            size_unit=data["size_unit"],
            seqlen=None if data["seqlen"] in ("", "unknown") else int(data["seqlen"]),
            source=data["source"],
            table=path.stem,
            tier=tier,
            windows=windows,
            file=str(path),
            line=number,
        )
        row.value  # noqa: B018  (validates the value cell)
    except ValueError as error:
        raise BaselineError(f"{where}: {error}") from None
    return row


def _optional_float(text: str) -> float | None:
    return float(text) if text.strip() else None


def load_dir(directory: str | Path, tier: str) -> list[BaselineRow]:
    rows = []
    for path in sorted(Path(directory).glob("*.csv")):
        rows += load_file(path, tier)
    return rows


def sidecar_path(csv_path: str | Path) -> Path:
    """The records JSONL a harness-made CSV was written from (``quant.csv`` ->
    ``quant.records.jsonl``): its full records, footprints included."""
    path = Path(csv_path)
    return path.with_name(f"{path.stem}.records.jsonl")


class _SidecarIndex:
    """What a CPU-tier CSV's sidecar file holds for its rows, read once per file; a study
    row, or a CSV without the file, has nothing."""

    def __init__(self, path_of, read):
        self._path_of, self._read = path_of, read
        self._files: dict[Path, dict] = {}

    def _entries(self, row: BaselineRow) -> dict:
        if row.tier != "cpu" or not row.file:
            return {}
        path = self._path_of(row.file)
        if path not in self._files:
            self._files[path] = self._read(path) if path.is_file() else {}
        return self._files[path]


class BaselineRecords(_SidecarIndex):
    """The full record behind each CPU-tier baseline row.

    A row's record has the row's (model, dataset, spec, metric, seqlen, and for perplexity
    its windows); where a point was recorded twice, the last record whose value prints as
    the row's value wins (that is the one the CSV was written from)."""

    def __init__(self):
        super().__init__(sidecar_path, _read_records)

    def of(self, row: BaselineRow):
        """The row's record, or None."""
        key = (row.model, row.dataset, row.spec, row.metric, row.seqlen)
        matches = [
            record
            for record in self._entries(row).get(key, [])
            if row.metric != "ppl" or row.windows in (None, record.windows)
        ]
        printed = [record for record in matches if printed_value(record.value) == row.raw_value]
        return (printed or matches or [None])[-1]


def _read_records(path: Path) -> dict[tuple, list]:
    from mpt_core.records import read

    index: dict[tuple, list] = {}
    for record in read(path):
        key = (record.model, record.dataset, record.spec, record.metric, record.seqlen)
        index.setdefault(key, []).append(record)
    return index


def printed_value(value: float) -> str:
    """A value as a baseline CSV prints it: six significant digits, ``nan`` if not finite."""
    return f"{value:.6g}" if math.isfinite(value) else "nan"


NOISE_HEADER = ("model", "dataset", "spec", "metric", "spread", "values")


def noise_path(csv_path: str | Path) -> Path:
    """The noise floors of a CPU-tier CSV (``quant.csv`` -> ``quant.noise.txt``)."""
    path = Path(csv_path)
    return path.with_name(f"{path.stem}.noise.txt")


class NoiseFloors(_SidecarIndex):
    """Each CPU-tier point's spread under float-order perturbations (threads, calibration
    batch), from the CSV's ``.noise.txt`` written by ``mpt baselines noise``."""

    def __init__(self):
        super().__init__(noise_path, read_noise)

    def of(self, row: BaselineRow) -> float | None:
        entry = self._entries(row).get((row.model, row.dataset, row.spec, row.metric))
        return entry[0] if entry else None


def read_noise(path: Path) -> dict[tuple, tuple[float, list[float]]]:
    """(model, dataset, spec, metric) -> (spread, the perturbed values) of a noise file;
    a malformed line is one BaselineError naming it."""
    body = [
        line for line in path.read_text(encoding="utf-8").splitlines() if not line.startswith("#")
    ]
    reader = csv.reader(body)
    if tuple(next(reader, ())) != NOISE_HEADER:
        raise BaselineError(f"{path}: header must be {','.join(NOISE_HEADER)}")
    floors = {}
    for number, cells in enumerate(reader, 2):
        if len(cells) != len(NOISE_HEADER):
            raise BaselineError(f"{path}:{number}: expected {len(NOISE_HEADER)} cells")
        try:
            spread = float(cells[4])
        except ValueError:
            raise BaselineError(f"{path}:{number}: spread {cells[4]!r} is not a number") from None
        try:
            values = [float(value) for value in cells[5].split()]
        except ValueError:
            raise BaselineError(f"{path}:{number}: values {cells[5]!r} are not numbers") from None
        floors[tuple(cells[:4])] = (spread, values)
    return floors
