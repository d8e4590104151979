"""write_figures: every figure the inputs support, as PNG and SVG."""

from __future__ import annotations

from pathlib import Path

from mpt_core.reporting.plots import write_figures

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "curves"


def test_write_figures_makes_family_and_combined_figures(tmp_path) -> None:
    paths = write_figures([FIXTURES / "synthetic.csv", FIXTURES / "grid.csv"], tmp_path / "figs")
    names = {p.name for p in paths}
    assert {"ptp_synthetic.png", "ptp_synthetic.svg"} <= names
    assert {"combined_grid.png", "combined_grid.svg"} <= names
    for path in paths:
        assert path.is_file() and path.stat().st_size > 5000
        head = path.read_bytes()[:8]
        assert head.startswith(b"\x89PNG") if path.suffix == ".png" else b"<?xml" in head


# --- what the figures read like (issue #23): Axes checked, not pixels ---------------------

import itertools  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from test_results import make_record  # noqa: E402

from mpt_core.analysis.curves import CurveKey, MeasuredCurve, group_curves, read_points  # noqa: E402
from mpt_core.analysis.fit import fit_phase_transition  # noqa: E402
from mpt_core.reporting.figure_style import plain_number, styles  # noqa: E402
from mpt_core.reporting.history import Run  # noqa: E402
from mpt_core.reporting.history_plots import plot_history, ppl_figure, ptp_figure  # noqa: E402
from mpt_core.reporting.plots import plot_family  # noqa: E402


def tick_texts(figure) -> list[str]:
    figure.canvas.draw()
    texts = []
    for ax in figure.axes:
        for axis in (ax.xaxis, ax.yaxis):
            labels = axis.get_ticklabels() + axis.get_ticklabels(minor=True)
            texts += [label.get_text() for label in labels] + [axis.get_offset_text().get_text()]
    return [text for text in texts if text]


def offsets(figure) -> list[str]:
    figure.canvas.draw()
    return [
        axis.get_offset_text().get_text()
        for ax in figure.axes
        for axis in (ax.xaxis, ax.yaxis)
        if axis.get_offset_text().get_text()
    ]


def assert_plain(figure) -> None:
    texts = tick_texts(figure)
    assert texts, "no tick labels at all"
    powers = [t for t in texts if "times" in t or "×" in t or "10^" in t or "e+" in t]
    assert not powers, powers
    assert offsets(figure) == []


def legend_styles(ax) -> list[tuple]:
    handles = ax.get_legend().legend_handles
    return [(tuple(np.round(h.get_color(), 3)), h.get_linestyle(), h.get_marker()) for h in handles]


def knee_curve(index: int, model: str = "tiny", dataset: str = "wikitext2") -> MeasuredCurve:
    """A synthetic knee at 0.4 + 0.01 * index: flat, then a steep rise."""
    x = np.round(np.arange(0.1, 0.95, 0.05), 2)
    knee = 0.4 + 0.01 * index
    y = 10 * (1 + 0.05 * x) * np.where(x > knee, np.exp(12 * (x - knee)), 1.0)
    key = CurveKey(model, dataset, "ppl", "512", f"method{index}", "dense", "ratio")
    return MeasuredCurve(key, x, y)


def history(points: int, runs: int = 3, start: float = 262.1) -> tuple[list[Run], list[tuple]]:
    found = [
        Run(
            f"run-{r}",
            tuple(
                make_record(spec=f"magnitude:0.{p:02d}", value=start + 0.01 * p + 0.02 * r)
                for p in range(points)
            ),
        )
        for r in range(runs)
    ]
    return found, sorted({point for run in found for point in run.values()})


def test_plain_numbers_never_a_power_of_ten():
    assert [plain_number(v) for v in (262.0, 26.2, 260.75, 0.30000000000000004, 12000.0)] == [
        "262",
        "26.2",
        "260.75",
        "0.3",
        "12,000",
    ]


def test_styles_are_unique_well_past_the_colour_cycle():
    first = list(itertools.islice(styles(), 320))
    assert len(set(first)) == 320


@pytest.mark.parametrize("start", [262.1, 2.5])  # a narrow PPL range; one spanning decades
def test_history_ppl_ticks_read_as_plain_decimals(start):
    runs, points = history(4, start=start)
    if start < 10:  # a collapse in the last run: a log axis
        runs[-1] = Run("collapsed", tuple(make_record(spec=p[2], value=5000.0) for p in points))
    figure = ppl_figure(runs, points)
    assert figure.axes[0].get_yscale() == ("log" if start < 10 else "linear")
    assert_plain(figure)


def test_sixteen_history_points_have_sixteen_different_legend_styles():
    runs, points = history(16)
    ax = ppl_figure(runs, points).axes[0]
    found = legend_styles(ax)
    assert len(found) == 16 and len(set(found)) == 16
    legend = ax.get_legend()
    ax.figure.canvas.draw()
    renderer = ax.figure.canvas.get_renderer()
    # beside the axes, not over the lines
    assert legend.get_window_extent(renderer).x0 >= ax.get_window_extent(renderer).x1


def test_history_ptp_legend_styles_are_unique():
    labels = [f"curve {i}" for i in range(12)]
    figure = ptp_figure(3, labels, [{label: 0.5 for label in labels}] * 3)
    assert len(set(legend_styles(figure.axes[0]))) == 12
    assert_plain(figure)


def test_ptp_figure_titles_the_model_and_dataset_and_shades_each_interval_and_the_band():
    curves = [knee_curve(i) for i in range(3)]
    figure = plot_family(curves, "table2", band=(0.55, 0.65))
    ax = figure.axes[0]
    assert "tiny" in ax.get_title() and "wikitext2" in ax.get_title()
    assert "table2" in ax.get_title()
    spans = {(round(p.get_x(), 6), round(p.get_x() + p.get_width(), 6)) for p in ax.patches}
    for curve in curves:
        fit = fit_phase_transition(curve.x, curve.y)
        assert (round(fit.s0_low, 6), round(fit.s0_high, 6)) in spans
    assert [p.get_hatch() for p in ax.patches].count("//") == 1
    assert (0.55, 0.65) in spans
    assert_plain(figure)


def test_ptp_figure_of_many_curves_and_models_tells_every_curve_apart():
    curves = [knee_curve(i, model=f"model-{i % 2}") for i in range(16)]
    ax = plot_family(curves, "table3").axes[0]
    found = legend_styles(ax)
    assert len(found) == 16 and len(set(found)) == 16
    assert "model-0" in ax.get_title() and "model-1" in ax.get_title()
    texts = [text.get_text() for text in ax.get_legend().get_texts()]
    assert all(text.startswith("model-") for text in texts)  # two models: each entry names its


def test_ptp_figure_of_the_synthetic_fixture_reads_plainly():
    curves = [c for c in group_curves(read_points(FIXTURES / "synthetic.csv"), axes=("ratio",))]
    assert_plain(plot_family(curves, "synthetic"))


def test_plot_history_writes_both_figures(tmp_path):
    runs, points = history(3)
    written = plot_history(runs, points, ["magnitude"], [{"magnitude": 0.5}] * 3, tmp_path)
    assert [path.name for path in written] == ["history-ppl.png", "history-ptp.png"]
    assert all(path.with_suffix(".svg").is_file() for path in written)
