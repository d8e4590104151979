"""Run history: every run's records in a folder, one JSONL per run, and what moved.

A run file is named ``run-<UTC time>-<git sha>.jsonl`` and holds that run's
records (each carries its library versions and git sha), so a CI artifact of the
folder is the whole history. ``step_changes`` flags, per point, the runs whose
value the verdict (``mpt_core.verdict.judge``: the same rule as the pytest plugin, with
the earlier run as the baseline) no longer passes; ``compare`` lists what moved between two
runs next to every library version that differs (the core libraries and each stage's own:
llama-cpp-python, gptqmodel, llmcompressor, bitsandbytes, lm-eval).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from mpt_core.errors import ResultsError
from mpt_core.records import Record, append, read
from mpt_core.verdict import DEFAULT_RTOL, Verdict, judge, protocol_of


@dataclass(frozen=True)
class Run:
    name: str
    records: tuple[Record, ...]

    @property
    def versions(self) -> dict[str, str]:
        """Every library version any record of the run names (values joined by " | " where
        records of one run disagree)."""
        seen: dict[str, list[str]] = {}
        for record in self.records:
            for name, version in record_versions(record).items():
                if version not in seen.setdefault(name, []):
                    seen[name].append(version)
        return {name: " | ".join(versions) for name, versions in seen.items()}

    @property
    def created(self) -> str:
        return min((record.created for record in self.records), default="")

    def values(self) -> dict[tuple, Record]:
        return {_point(record): record for record in self.records}


def record_versions(record: Record) -> dict[str, str]:
    """The record's versions map and the library (``NAME VERSION``) of each of its stages."""
    versions = dict(record.versions)
    for stage in record.settings:
        name, _, version = str(stage.get("library", "")).partition(" ")
        if name:
            versions[name] = version or "unknown"
    return versions


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


def judged(before: Run, after: Run, point: tuple, rtol: float = DEFAULT_RTOL) -> Verdict:
    """The verdict of ``point`` in ``after`` with ``before`` as its baseline: the pytest
    plugin's rule, each run's dense point of the same protocol as its dense reference."""
    earlier, later = before.values(), after.values()
    dense_point = (*point[:2], "dense", *point[3:])
    dense_before, dense_after = earlier.get(dense_point), later.get(dense_point)
    return judge(
        later[point],
        earlier[point].value,
        rtol=rtol,
        dense_measured=dense_after.value if dense_after else None,
        dense_baseline=dense_before.value if dense_before else None,
        baseline_footprint=earlier[point].footprint,
        baseline_protocol=protocol_of(earlier[point]),
        baseline_losses=earlier[point].window_losses,
    )


def protocol_diff(a: Run, b: Run) -> tuple[str, ...]:
    """The protocol fields (evaluation, seqlen, windows, dtype) whose values differ between
    two runs."""

    def seen(run: Run) -> dict[str, set]:
        fields: dict[str, set] = {}
        for record in run.records:
            for field, value in protocol_of(record).items():
                fields.setdefault(field, set()).add(value)
        return fields

    before, after = seen(a), seen(b)
    return tuple(
        f"{field} {_values(before[field])} vs {_values(after[field])}"
        for field in sorted(set(before) & set(after))
        if before[field] != after[field]
    )


def _values(values: set) -> str:
    return "/".join(str(value) for value in sorted(values, key=str))


def step_changes(runs: list[Run], rtol: float = DEFAULT_RTOL) -> list[tuple[tuple, str, str, str]]:
    """(point, run before, run after, the verdict's word: regressed, improved, ...) for every
    step a point took between consecutive runs."""
    steps = []
    for earlier, later in zip(runs, runs[1:]):
        for point in sorted(set(earlier.values()) & set(later.values())):
            verdict = judged(earlier, later, point, rtol)
            if not verdict.passed:
                steps.append((point, earlier.name, later.name, verdict.outcome))
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
