"""``--mpt-plan``: what a selection will measure and cost, printed before anything runs.

A point is what one compression serves (``policy.row_point``: model, seqlen, spec, windows);
its rows are the datasets and tasks measured on that one compressed model, each distinct
(dataset, limit) evaluated once. The cost of a point is its stages' compression (a pipeline's
first stage once per model and seqlen when pipelines share it, as ``measure.Session`` reuses
it between neighbouring tests, which ``collection.order`` makes them) plus its evaluations,
from ``costs``; a method's first point in a session also pays what the CPU tier measured for
that method's first record (ASVD's sensitivity search). The plan compares that with every row
compressed and evaluated on its own. ``--mpt-plan-json FILE`` writes the same as JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from mpt_core.baselines import BaselineRow
from mpt_core.harness import costs, policy
from mpt_core.models import study_checkpoint
from mpt_core.spec import Spec

HOUR = 3600.0


@dataclass
class PlannedPoint:
    """A distinct point of the selection, its rows and its estimated device seconds."""

    key: tuple  # policy.row_point
    tier: str
    rows: list[BaselineRow] = field(default_factory=list)
    evaluations: dict[tuple, float] = field(default_factory=dict)  # (dataset, limit) -> s
    stage_seconds: float = 0.0  # its stages' compression, nothing shared
    first_seconds: float = 0.0  # the first point of a method in a session pays its statistic
    compress_seconds: float = 0.0  # what it adds to the session: shared first stages once

    @property
    def device(self) -> str:
        return "GPU" if self.tier == "study" else "CPU"

    @property
    def evaluate_seconds(self) -> float:
        return sum(self.evaluations.values())

    @property
    def seconds(self) -> float:
        return self.compress_seconds + self.evaluate_seconds


@dataclass
class Plan:
    points: list[PlannedPoint]
    rows: int
    not_measured: int
    each_row_alone: dict[str, float]  # device -> seconds with one compression per row
    substituted: dict[str, str]  # stage key asked for -> what stood in for it

    def totals(self) -> dict[str, dict[str, float]]:
        found: dict[str, dict[str, float]] = {}
        for point in self.points:
            total = found.setdefault(point.device, {"compress": 0.0, "evaluate": 0.0})
            total["compress"] += point.compress_seconds
            total["evaluate"] += point.evaluate_seconds
        return found

    def models(self) -> dict[str, float]:
        """The study checkpoints the selection loads -> parameter count."""
        names = {point.rows[0].model for point in self.points if point.tier == "study"}
        return {study_checkpoint(name): costs.params(name) for name in sorted(names)}


def build(rows: list[BaselineRow], windows_option: int | None = None) -> Plan:
    """The plan of ``rows`` in their order (``collection.order`` groups them); a row that a
    curve test also measures counts once."""
    rows = list(dict.fromkeys(rows))
    points: dict[tuple, PlannedPoint] = {}
    measured = [row for row in rows if policy.is_measured(row)]
    for row in measured:
        key = policy.row_point(row, windows_option)
        point = points.setdefault(key, PlannedPoint(key, row.tier))
        point.rows.append(row)
        if (row.dataset, row.limit) not in point.evaluations:
            seconds = costs.evaluate_seconds(row, key[1], key[3])
            point.evaluations[(row.dataset, row.limit)] = seconds
    substituted = _price_compressions(list(points.values()))
    alone: dict[str, float] = {}  # every row compressed and evaluated on its own
    for point in points.values():
        each = sum(point.evaluations[(row.dataset, row.limit)] for row in point.rows)
        each += point.stage_seconds * len(point.rows) + point.first_seconds
        alone[point.device] = alone.get(point.device, 0.0) + each
    return Plan(list(points.values()), len(rows), len(rows) - len(measured), alone, substituted)


def _price_compressions(points: list[PlannedPoint]) -> dict[str, str]:
    """Set each point's compression seconds, in the order the points run; returns the stage
    rates a median stood in for."""
    shared: set[tuple] = set()  # (model, seqlen, first stage) a pipeline already computed
    methods: set[tuple] = set()  # (model, seqlen, rate key) whose first point is paid
    substituted = {}
    for point in points:
        model, seqlen, spec, _ = point.key
        scale = costs.params(point.rows[0].model) / 1e9
        stages = Spec.parse(spec).stages
        for index, stage in enumerate(stages):
            rate = costs.stage_rate(stage, point.tier)
            if not rate.measured:
                substituted[rate.asked] = rate.key
            first_stage = (model, seqlen, str(stage)) if index == 0 and len(stages) > 1 else None
            point.stage_seconds += rate.point * scale
            point.compress_seconds += 0.0 if first_stage in shared else rate.point * scale
            if (model, seqlen, rate.key) not in methods:
                point.compress_seconds += rate.first * scale
                point.first_seconds += rate.first * scale
            methods.add((model, seqlen, rate.key))
            if first_stage:
                shared.add(first_stage)
    return substituted


def summary(plan: Plan) -> list[str]:
    """The plan's summary lines (what the docs quote)."""
    lines = [
        f"plan: {plan.rows} rows, {plan.rows - plan.not_measured} measured at "
        f"{len(plan.points)} distinct points ({plan.not_measured} tokens/s rows not measured)"
    ]
    models = plan.models()
    if models:
        size = sum(models.values()) * costs.BYTES_PER_PARAM / 1e9
        lines.append(f"plan: {len(models)} models to download, {size:.0f} GB")
    for device, total in sorted(plan.totals().items()):
        hours = (total["compress"] + total["evaluate"]) / HOUR
        lines.append(
            f"plan: {hours:.1f} {device}-hours (compress {total['compress'] / HOUR:.1f} + "
            f"evaluate {total['evaluate'] / HOUR:.1f}), each point compressed once; "
            f"{plan.each_row_alone[device] / HOUR:.1f} if every row compressed on its own"
        )
    return lines


def render(plan: Plan) -> list[str]:
    """Every line ``--mpt-plan`` prints."""
    lines = ["points (model, seqlen, spec, windows): rows; estimated compress + evaluate"]
    for point in plan.points:
        model, seqlen, spec, windows = point.key
        lines.append(
            f"  {model} {seqlen} {spec} {windows or 'all'}: {_rows(len(point.rows))}; "
            f"{point.compress_seconds:.0f} + {point.evaluate_seconds:.0f} {point.device}-s"
        )
    models = plan.models()
    if models:
        lines.append(f"models to download ({costs.BYTES_PER_PARAM} bytes a parameter):")
        for checkpoint, count in models.items():
            size = count * costs.BYTES_PER_PARAM / 1e9
            lines.append(f"  {checkpoint}: {count / 1e9:.2f}e9 parameters, {size:.1f} GB")
    for asked, used in sorted(plan.substituted.items()):
        lines.append(f"no CPU-tier record of {asked}: the rate of {used} stands in")
    return [*lines, costs.estimate_note(), *summary(plan)]


def _rows(count: int) -> str:
    return f"{count} row" if count == 1 else f"{count} rows"


def as_json(plan: Plan) -> dict:
    """The plan for CI: every point with its rows and seconds, the models, the totals."""
    return {
        "rows": plan.rows,
        "not_measured_rows": plan.not_measured,
        "points": [
            {
                "model": point.key[0],
                "seqlen": point.key[1],
                "spec": point.key[2],
                "windows": point.key[3],
                "device": point.device,
                "rows": [[row.table, row.dataset, row.metric] for row in point.rows],
                "evaluations": [
                    [dataset, limit, seconds]
                    for (dataset, limit), seconds in point.evaluations.items()
                ],
                "compress_seconds": point.compress_seconds,
                "evaluate_seconds": point.evaluate_seconds,
            }
            for point in plan.points
        ],
        "models": [
            {"checkpoint": name, "params": count, "bytes": count * costs.BYTES_PER_PARAM}
            for name, count in plan.models().items()
        ],
        "hours": {
            device: {
                "compress": total["compress"] / HOUR,
                "evaluate": total["evaluate"] / HOUR,
                "each_row_alone": plan.each_row_alone[device] / HOUR,
            }
            for device, total in plan.totals().items()
        },
        "substituted_rates": plan.substituted,
        "cpu_to_gpu_speedup": costs.gpu_speedup(),
        "note": costs.estimate_note(),
    }


def report(config, rows: list[BaselineRow]) -> None:
    """Print the plan of the selected rows (and write its JSON where asked)."""
    plan = build(rows, config.getoption("--mpt-windows"))
    terminal = config.pluginmanager.get_plugin("terminalreporter")
    for line in render(plan):
        terminal.write_line(line)
    if config.getoption("--mpt-plan-json"):
        text = json.dumps(as_json(plan), indent=1)
        Path(config.getoption("--mpt-plan-json")).write_text(text + "\n", encoding="utf-8")
