"""Figures of a run history: PPL over runs per point, PTP over runs per curve."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mpt_core.reporting.figure_style import legend_beside, plain_ticks, styles  # noqa: E402
from mpt_core.reporting.history import Run, point_label  # noqa: E402

LOG_SPAN = 10  # PPLs spanning more than this factor get a log axis (a collapse among them)


def plot_history(
    runs: list[Run], points: list[tuple], labels: list[str], ptps: list[dict[str, float]], out: Path
) -> list[Path]:
    """``history-ppl`` (and ``history-ptp`` when curves were fitted) in ``out``, PNG and SVG."""
    out.mkdir(parents=True, exist_ok=True)
    written = [_save(ppl_figure(runs, points), out / "history-ppl")]
    if labels:
        written.append(_save(ptp_figure(len(runs), labels, ptps), out / "history-ptp"))
    return written


def ppl_figure(runs: list[Run], points: list[tuple]) -> plt.Figure:
    """Each point's PPL over the runs; a log axis only when a collapse widens the range."""
    runs_axis = list(range(1, len(runs) + 1))
    figure, axis = plt.subplots(figsize=(9, 4.5))
    values = {point: [_value(run, point) for run in runs] for point in points}
    for style, point in zip(styles(), points, strict=False):
        _line(axis, runs_axis, values[point], style, point_label(point))
    axis.set(xlabel="run", ylabel="PPL", title="PPL over runs", xticks=runs_axis)
    finite = [v for series in values.values() for v in series if math.isfinite(v)]
    if finite and max(finite) > LOG_SPAN * min(finite):
        axis.set(yscale="log", ylabel="PPL (log)")
    _finish(axis, fontsize=6)
    return figure


def ptp_figure(runs: int, labels: list[str], ptps: list[dict[str, float]]) -> plt.Figure:
    """Each curve's s0 over the runs."""
    runs_axis = list(range(1, runs + 1))
    figure, axis = plt.subplots(figsize=(9, 4.5))
    for style, label in zip(styles(), labels, strict=False):
        _line(axis, runs_axis, [found.get(label, math.nan) for found in ptps], style, label)
    axis.set(xlabel="run", ylabel="s0 (PTP)", title="PTP over runs", xticks=runs_axis)
    _finish(axis, fontsize=7)
    return figure


def _line(axis, runs_axis: list[int], values: list[float], style, label: str) -> None:
    axis.plot(
        runs_axis,
        values,
        color=style.colour,
        linestyle=style.linestyle,
        marker=style.marker,
        label=label,
    )


def _finish(axis, fontsize: int) -> None:
    plain_ticks(axis)
    axis.grid(alpha=0.3)
    legend_beside(axis, fontsize)


def _value(run: Run, point: tuple) -> float:
    record = run.values().get(point)
    return math.nan if record is None or not math.isfinite(record.value) else record.value


def _save(figure, stem: Path) -> Path:
    figure.tight_layout()
    figure.savefig(stem.with_suffix(".png"), dpi=120)
    figure.savefig(stem.with_suffix(".svg"))
    plt.close(figure)
    return stem.with_suffix(".png")
