"""Measured points from baseline CSVs or results JSONL, grouped into curves.

A curve is one compression stage varied while everything else stays fixed:
(model, dataset, metric, seqlen, the varying stage's method and options, the
other stages). Its x is the stage's compression: the ratio of a ratio stage
(``wanda:0.5`` -> 0.5), or 1 - bits/16 for a quantization stage (``gptq:4``
-> 0.75; ``gguf:Q4_K_M`` -> 4 nominal bits -> 0.75). N:M patterns are not on
the ratio axis and join no curve.

The point where the varying stage is absent is x = 0 of that curve: ``dense``
starts every single-stage curve, ``wanda:0.5`` (the study's FP16 column) starts
the GGUF curve of ``wanda:0.5+gguf:*``, ``gguf:Q4_K_M`` starts the Wanda curve
of ``wanda:*+gguf:Q4_K_M``.

Values: ``-`` means not measured (the row is skipped); ``nan`` / ``inf`` mean
measured and collapsed (kept, and censored by the fitter).
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from mpt_core.baselines import HEADER
from mpt_core.errors import BaselineError, ResultsError, SpecError
from mpt_core.records import BadRecord, with_nonfinite
from mpt_core.spec import Spec, Stage

AXES = ("ratio", "bits")
SIZE_UNITS = {"pct_fp16": 0.01, "fraction_fp16": 1.0}  # to a fraction of the FP16 model
_SCHEME_BITS = re.compile(r"(\d+)")


@dataclass(frozen=True)
class Point:
    """One measurement: a spec on a model, data set and metric."""

    model: str
    dataset: str
    metric: str
    seqlen: str
    spec: Spec
    value: float  # nan or inf: measured and collapsed
    size: float | None = None  # fraction of the FP16 model, where the source states it
    source: str = ""
    size_gb: float | None = None  # absolute size, where the source gives one (Tables 5-6)

    @property
    def setting(self) -> tuple[str, str, str, str]:
        return (self.model, self.dataset, self.metric, self.seqlen)

    @property
    def point_key(self) -> tuple[str, str, str, str, str]:
        """What makes two measurements the same point: its setting and spec."""
        return (*self.setting, str(self.spec))


@dataclass(frozen=True)
class CurveKey:
    """What stays fixed along a curve."""

    model: str
    dataset: str
    metric: str
    seqlen: str
    method: str  # the varying stage without its level, e.g. "wanda[calib=ptb]"
    others: str  # the other stages as a spec, "dense" when there are none
    axis: str  # "ratio" or "bits"

    @property
    def label(self) -> str:
        extra = "" if self.others == "dense" else f" + {self.others}"
        return f"{self.method}{extra}"


@dataclass
class MeasuredCurve:
    """Points along one curve, sorted by compression x."""

    key: CurveKey
    x: np.ndarray = field(default_factory=lambda: np.empty(0))
    y: np.ndarray = field(default_factory=lambda: np.empty(0))
    specs: tuple[str, ...] = ()


def read_points(path: str | Path) -> list[Point]:
    """Points from a baseline CSV (by its header) or a results JSONL (``*.jsonl``)."""
    path = Path(path)
    if not path.is_file():
        raise BaselineError(f"{path}: no such file")
    if path.suffix == ".jsonl":
        return read_jsonl(path)
    return read_csv(path)


def read_csv(path: Path) -> list[Point]:
    """A baseline CSV with exactly the schema of baselines/study (see its README);
    ``#`` lines (a CPU-tier file's command, date and versions) are metadata."""
    rows = list(csv.reader(_data_lines(path)))
    if not rows:
        raise BaselineError(f"{path}: empty file; expected the header {','.join(HEADER)}")
    if tuple(rows[0]) != HEADER:
        raise BaselineError(f"{path}: header {','.join(rows[0])!r} is not {','.join(HEADER)!r}")
    points = []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(HEADER):
            raise BaselineError(f"{path}:{line}: {len(row)} fields, expected {len(HEADER)}")
        point = point_from_row(dict(zip(HEADER, row, strict=True)), f"{path}:{line}")
        if point is not None:
            points.append(point)
    return points


def point_from_row(row: dict[str, str], where: str) -> Point | None:
    """One CSV row; None for a ``-`` (unmeasured) cell."""
    value = parse_value(row["value"], where)
    if value is None:
        return None
    try:
        spec = Spec.parse(row["spec"])
    except SpecError as error:
        raise BaselineError(f"{where}: {error}") from None
    return Point(
        model=row["model"],
        dataset=row["dataset"],
        metric=row["metric"],
        seqlen=row["seqlen"],
        spec=spec,
        value=value,
        size=parse_size(row["size"], row["size_unit"], where),
        source=row["source"],
        size_gb=float(row["size"]) if row["size_unit"] == "GB" and row["size"].strip() else None,
    )


def parse_value(text: str, where: str) -> float | None:
    text = text.strip()
    if text in ("-", ""):
        return None
    try:
        return float(text)  # "nan" and "inf" parse: a collapsed measurement
    except ValueError:
        raise BaselineError(f"{where}: value {text!r} is not a number, 'nan' or '-'") from None


def parse_size(text: str, unit: str, where: str) -> float | None:
    """Relative size as a fraction of FP16; absolute sizes (GB) carry no reference here."""
    if not text.strip() or unit not in SIZE_UNITS:
        return None
    try:
        return float(text) * SIZE_UNITS[unit]
    except ValueError:
        raise BaselineError(f"{where}: size {text!r} is not a number") from None


def read_jsonl(path: Path) -> list[Point]:
    """Result records: spec, value, metric, dataset, model and a footprint or relative size."""
    points = []
    for line, text in enumerate(path.read_text().splitlines(), start=1):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError:
            raise ResultsError(f"{path}:{line}: not a JSON record") from None
        if isinstance(record, dict):
            try:
                record = with_nonfinite(record)  # schema 2 writes them as null
            except BadRecord as error:
                raise ResultsError(f"{path}:{line}: {error}") from None
        points.append(point_from_record(record, f"{path}:{line}"))
    return points


def point_from_record(record: dict, where: str) -> Point:
    """Adapter for a results record (mpt_core.records.Record as a dict)."""
    missing = [key for key in ("model", "dataset", "spec", "metric", "value") if key not in record]
    if missing:
        raise ResultsError(f"{where}: record lacks {', '.join(missing)}")
    try:
        spec = Spec.parse(record["spec"])
    except SpecError as error:
        raise ResultsError(f"{where}: {error}") from None
    value = record["value"]
    if value is None:  # schema 2 puts a non-finite value back from ``nonfinite`` first
        raise ResultsError(f"{where}: value is null and no 'nonfinite' entry says why")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ResultsError(f"{where}: value is {value!r}, not a number")
    if value == -math.inf:
        raise ResultsError(f"{where}: value is -inf, which no metric can measure")
    return Point(
        model=str(record["model"]),
        dataset=str(record["dataset"]),
        metric=str(record["metric"]),
        seqlen=str(record.get("seqlen", "unknown")),
        spec=spec,
        value=float(value),
        size=record_size(record),
        source=where,
    )


def record_size(record: dict) -> float | None:
    footprint = record.get("footprint") or {}
    if "relative_size" in footprint:
        return float(footprint["relative_size"])
    if footprint.get("fp16_bytes"):
        return float(footprint["bytes"]) / float(footprint["fp16_bytes"])
    if "relative_size" in record:
        return float(record["relative_size"])
    return None


def stage_x(stage: Stage) -> tuple[str, float] | None:
    """(axis, compression) of one stage, or None when it is on neither axis."""
    kind = stage.level_kind
    if kind == "ratio":
        return "ratio", float(stage.ratio)
    if kind == "bits":
        return "bits", 1.0 - stage.bits / 16.0
    if kind == "scheme":
        bits = scheme_bits(stage.scheme)
        return None if bits is None else ("bits", 1.0 - bits / 16.0)
    return None


def scheme_bits(scheme: str) -> int | None:
    """Nominal bits of a named scheme: Q4_K_M -> 4, IQ2_M -> 2, Q8_0 -> 8, FP16 -> 16."""
    found = _SCHEME_BITS.search(scheme)
    return int(found.group(1)) if found else None


def without_level(stage: Stage) -> str:
    return str(Stage(method=stage.method, options=stage.options))


def group_curves(points: list[Point], axes: tuple[str, ...] = AXES) -> list[MeasuredCurve]:
    """Every curve the points lie on, with its x = 0 point joined where it exists."""
    members: dict[CurveKey, list[tuple[float, float, str]]] = defaultdict(list)
    by_spec: dict[tuple, list[Point]] = defaultdict(list)
    for point in points:
        by_spec[point.point_key].append(point)
        for i, stage in enumerate(point.spec.stages):
            place = stage_x(stage)
            if place is None or place[0] not in axes:
                continue
            others = str(Spec(point.spec.stages[:i] + point.spec.stages[i + 1 :]))
            key = CurveKey(*point.setting, without_level(stage), others, place[0])
            members[key].append((place[1], point.value, str(point.spec)))
    curves = []
    for key, items in members.items():
        origin = by_spec.get((key.model, key.dataset, key.metric, key.seqlen, key.others), [])
        if len({p.value for p in origin}) == 1 and all(x != 0.0 for x, _, _ in items):
            items = [(0.0, origin[0].value, str(origin[0].spec)), *items]
        items.sort(key=lambda item: item[0])
        xs, ys, specs = zip(*items, strict=True)
        curves.append(MeasuredCurve(key, np.array(xs), np.array(ys), tuple(specs)))
    return sorted(curves, key=lambda c: (c.key.model, c.key.dataset, c.key.metric, c.key.label))


def merge_repeats(points: list[Point]) -> list[Point]:
    """One point per spec and setting: repeated measurements (the same point recorded by
    two grids of one protocol, whose sums differ in the last digits between thread
    counts) become their mean, in the place of the first."""
    repeats: dict[tuple, list[Point]] = defaultdict(list)
    for point in points:
        repeats[point.point_key].append(point)
    return [group[0] if len(group) == 1 else _mean_point(group) for group in repeats.values()]


def _mean_point(group: list[Point]) -> Point:
    mean = sum(p.value for p in group) / len(group)
    return replace(group[0], value=mean, source=f"mean of {len(group)} measurements")


def is_baseline_csv(path: str | Path) -> bool:
    """True when the file is JSONL or a CSV with the baseline schema's header."""
    path = Path(path)
    if path.suffix == ".jsonl":
        return True
    header = next(csv.reader(_data_lines(path)), [])
    return tuple(header) == HEADER


def _data_lines(path: Path) -> list[str]:
    """The lines of a CSV file without its ``#`` metadata lines."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line for line in lines if not line.startswith("#")]


def read_xy_curves(
    path: str | Path, x: str, y: str, by: str | None = None, axis: str = "ratio"
) -> list[MeasuredCurve]:
    """Curves from any CSV with an x and a y column, one curve per value of ``by``."""
    path = Path(path)
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        rows = list(reader)
    if not columns:
        raise BaselineError(f"{path}: empty file; expected a header with columns {x!r}, {y!r}")
    for name in (x, y, by):
        if name is not None and name not in columns:
            raise BaselineError(f"{path}: no column {name!r}; columns are {', '.join(columns)}")
    groups: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for line, row in enumerate(rows, start=2):
        value = parse_value(row[y], f"{path}:{line}")
        if value is not None:
            groups[row[by] if by else path.stem].append((number(row[x], f"{path}:{line}"), value))
    curves = []
    for name, items in sorted(groups.items()):
        xs, ys = (np.array(column) for column in zip(*items, strict=True))
        xs = 1.0 - xs / 16.0 if axis == "bits" else xs
        key = CurveKey(path.stem, "", y, "", name, "dense", axis)
        curves.append(MeasuredCurve(key, xs, ys, tuple(str(v) for v in xs)))
    return curves


def number(text: str, where: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise BaselineError(f"{where}: {text!r} is not a number") from None
