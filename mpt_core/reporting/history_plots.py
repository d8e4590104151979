"""Figures of a run history: PPL over runs per point, PTP over runs per curve."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mpt_core.reporting.history import Run, point_label  # noqa: E402


def plot_history(
    runs: list[Run], points: list[tuple], labels: list[str], ptps: list[dict[str, float]], out: Path
) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    runs_axis = list(range(1, len(runs) + 1))
    figure, axis = plt.subplots(figsize=(8, 4.5))
    for point in points:
        values = [_value(run, point) for run in runs]
        axis.plot(runs_axis, values, marker="o", label=point_label(point))
    axis.set(xlabel="run", ylabel="PPL", yscale="log", title="PPL over runs", xticks=runs_axis)
    axis.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    written = [_save(figure, out / "history-ppl")]
    if labels:
        figure, axis = plt.subplots(figsize=(8, 4.5))
        for label in labels:
            axis.plot(
                runs_axis, [found.get(label, math.nan) for found in ptps], marker="*", label=label
            )
        axis.set(xlabel="run", ylabel="s0 (PTP)", title="PTP over runs", xticks=runs_axis)
        axis.legend(fontsize=7)
        written.append(_save(figure, out / "history-ptp"))
    return written


def _value(run: Run, point: tuple) -> float:
    record = run.values().get(point)
    return math.nan if record is None or not math.isfinite(record.value) else record.value


def _save(figure, stem: Path) -> Path:
    figure.tight_layout()
    figure.savefig(stem.with_suffix(".png"), dpi=120)
    figure.savefig(stem.with_suffix(".svg"))
    plt.close(figure)
    return stem.with_suffix(".png")
