"""Run history: every run's records in a folder, one JSONL per run, and what moved.

A run file is named ``run-<UTC time>-<git sha>.jsonl`` and holds that run's
records (each carries its library versions and git sha), so a CI artifact of the
folder is the whole history. ``step_changes`` flags, per point, the runs whose
value left the previous run's by more than the tolerance and by more than two
standard errors (the change-point view asv takes, on perplexities); ``compare``
lists what moved between two runs next to the library versions that differ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from mpt_core.errors import ResultsError
from mpt_core.records import Record, append, read

DEFAULT_RTOL = 0.02


@dataclass(frozen=True)
class Run:
    name: str
    records: tuple[Record, ...]

    @property
    def versions(self) -> dict[str, str]:
        return self.records[0].versions if self.records else {}

    @property
    def created(self) -> str:
        return min((record.created for record in self.records), default="")

    def values(self) -> dict[tuple, Record]:
        return {_point(record): record for record in self.records}


def _point(record: Record) -> tuple:
    return (record.model, record.dataset, record.spec, record.seqlen, record.windows, record.metric)


def point_label(point: tuple) -> str:
    model, dataset, spec, seqlen, windows, metric = point
    return f"{model} {dataset} {spec} ({metric}, {seqlen}x{windows})"


def write_run(directory: str | Path, records: list[Record]) -> Path:
    """Write a run's records as a new run file; returns its path."""
    sha = (records[0].git_sha or "nogit")[:8] if records else "empty"
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    path = Path(directory) / f"run-{stamp}-{sha}.jsonl"
    for record in records:
        append(path, record)
    return path


def load_run(path: str | Path) -> Run:
    path = Path(path)
    if not path.is_file():
        raise ResultsError(f"run file {path} does not exist")
    return Run(path.stem, tuple(read(path)))


def load_runs(directory: str | Path) -> list[Run]:
    """Every run of a history folder, oldest first."""
    folder = Path(directory)
    if not folder.is_dir():
        raise ResultsError(f"history folder {folder} does not exist: pass --mpt-history DIR")
    runs = [load_run(path) for path in sorted(folder.glob("run-*.jsonl"))]
    if not runs:
        raise ResultsError(f"{folder} holds no run-*.jsonl files")
    return sorted(runs, key=lambda run: (run.created, run.name))


def moved(before: Record, after: Record, rtol: float = DEFAULT_RTOL) -> bool:
    """After differs from before beyond rtol and beyond two combined standard errors."""
    a, b = before.value, after.value
    if not (math.isfinite(a) and math.isfinite(b)):
        return math.isfinite(a) != math.isfinite(b)
    noise = 2 * math.hypot(_finite(before.stderr), _finite(after.stderr))
    return abs(b / a - 1) > rtol and abs(b - a) > noise


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 0.0


def step_changes(runs: list[Run], rtol: float = DEFAULT_RTOL) -> list[tuple[tuple, str, str]]:
    """(point, run before, run after) for every step a point took between consecutive runs."""
    steps = []
    for earlier, later in zip(runs, runs[1:]):
        before, after = earlier.values(), later.values()
        for point in sorted(set(before) & set(after)):
            if moved(before[point], after[point], rtol):
                steps.append((point, earlier.name, later.name))
    return steps


def version_diff(a: Run, b: Run) -> dict[str, tuple[str, str]]:
    names = sorted(set(a.versions) | set(b.versions))
    return {
        name: (a.versions.get(name, "-"), b.versions.get(name, "-"))
        for name in names
        if a.versions.get(name) != b.versions.get(name)
    }


def run_ptps(run: Run) -> dict[str, float]:
    """s0 of every fittable single-method curve of a run, by curve label."""
    from dataclasses import asdict

    from mpt_core.analysis.curves import group_curves, point_from_record
    from mpt_core.analysis.fit import N_PARAMS, fit_phase_transition
    from mpt_core.errors import FitError

    points = [point_from_record(asdict(record), run.name) for record in run.records]
    ptps = {}
    for curve in group_curves(points):
        if curve.key.others != "dense" or len(curve.x) <= N_PARAMS:
            continue
        label = f"{curve.key.model} {curve.key.dataset} {curve.key.label}"
        try:
            ptps[label] = fit_phase_transition(curve.x, curve.y).s0
        except FitError:
            continue
    return ptps
