"""Figures in the study's layout (matplotlib, Agg backend; every figure as PNG and SVG).

- ``ptp_<table>``: per method family, measured points, the fitted curve and a
  star at the PTP with its 95% interval shaded, and the study's range of the PTP when
  the caller gives it (the study's Figs. 2-3 and B1), from single-stage ratio curves;
  each panel titled with its model(s), dataset and table.
- ``quantization_size``: PPL against size in GB per model family at each
  quantization level (Fig. 4, from Tables 5-6).
- ``combined_<table>``: the pruning x quantization surface and its contour with
  the Pareto front (red) and the phase-transition line (orange) (Fig. 5).
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from mpt_core.analysis.combine import Grid, build_grid, pareto_front, select_setting  # noqa: E402
from mpt_core.analysis.curves import (  # noqa: E402
    MeasuredCurve,
    Point,
    group_curves,
    read_points,
    scheme_bits,
)
from mpt_core.analysis.fit import PhaseFit, fit_phase_transition  # noqa: E402
from mpt_core.errors import FitError  # noqa: E402
from mpt_core.reporting.figure_style import Style, legend_beside, plain_ticks, styles  # noqa: E402

FORMATS = ("png", "svg")
AXIS_LABELS = {"ratio": "compression ratio", "bits": "compression (1 - bits/16)"}
MIN_GRID_CELLS = 12
LOG_SPAN = 10  # a curve whose PPL spans more than this factor gets a log axis


def write_figures(
    csv_paths: list[str | Path],
    out_dir: str | Path,
    bands: dict[str, tuple[float, float]] | None = None,
) -> list[Path]:
    """Every figure the files support; returns the paths written. ``bands``: the study's
    range of the PTP (compression x) by file stem, drawn on that file's PTP figure."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    quant_points: list[Point] = []
    for path in map(Path, csv_paths):
        points = [p for p in read_points(path) if p.metric == "ppl"]
        quant_points += [p for p in points if p.size_gb is not None]
        curves = family_curves(points)
        if curves:
            band = (bands or {}).get(path.stem)
            written += save(plot_family(curves, path.stem, band), out / f"ptp_{path.stem}")
        grid = combined_grid(points)
        if grid is not None:
            written += save(plot_combined(grid, path.stem), out / f"combined_{path.stem}")
    if quant_points:
        written += save(plot_quantization(quant_points), out / "quantization_size")
    return written


def save(fig: plt.Figure, stem: Path) -> list[Path]:
    paths = [stem.with_suffix(f".{fmt}") for fmt in FORMATS]
    for path in paths:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return paths


def save_figure(fig: plt.Figure, path: Path) -> None:
    """One file, its format by its suffix."""
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def family_curves(points: list[Point]) -> list[MeasuredCurve]:
    """Single-stage ratio curves with enough points to fit."""
    curves = group_curves(points, axes=("ratio",))
    return [c for c in curves if c.key.others == "dense" and c.x.size >= 5]


def plot_family(
    curves: list[MeasuredCurve], title: str, band: tuple[float, float] | None = None
) -> plt.Figure:
    """One panel per dataset: every curve's points, fit, s0 and its 95% interval, each
    curve in a style of its own; ``band`` (the study's range of s0) hatched when given."""
    datasets = sorted({c.key.dataset for c in curves})
    fig, axes = plt.subplots(1, len(datasets), figsize=(9 * len(datasets), 5), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        shown = [c for c in curves if c.key.dataset == dataset]
        models = sorted({c.key.model for c in shown})
        for style, curve in zip(styles(), shown, strict=False):
            draw_curve(ax, curve, style, with_model=len(models) > 1)
        if band is not None:
            draw_band(ax, band)
        ax.set(yscale="log", xlabel="compression ratio", ylabel=f"{dataset} PPL (log)")
        ax.set_title(f"{', '.join(models)}: {dataset} ({title})", fontsize=10)
        plain_ticks(ax)
        ax.grid(alpha=0.3)
        legend_beside(ax)
    fig.tight_layout()
    return fig


def draw_curve(ax: plt.Axes, curve: MeasuredCurve, style: Style, with_model: bool) -> None:
    """Points, the fitted curve, a star at s0 (hollow when the fit selects no transition)
    and s0's 95% interval shaded in the curve's colour."""
    draw_points(ax, curve, style.colour)
    try:
        fit = fit_phase_transition(curve.x, curve.y)
    except FitError:
        return
    name = f"{curve.key.model} {curve_label(curve)}" if with_model else curve_label(curve)
    label = f"{name}: s0={fit.s0:.2f} [{fit.s0_low:.2f}, {fit.s0_high:.2f}]"
    draw_fit(ax, curve, fit, style.colour, label, style.linestyle)
    ax.axvspan(fit.s0_low, fit.s0_high, color=style.colour, alpha=0.12)


def draw_band(ax: plt.Axes, band: tuple[float, float]) -> None:
    ax.axvspan(*band, fill=False, hatch="//", ec="gray", label="study's range of s0")


def curve_label(curve: MeasuredCurve) -> str:
    seqlen = curve.key.seqlen
    return f"{curve.key.label} ({seqlen})" if seqlen != "unknown" else curve.key.label


def draw_points(ax: plt.Axes, curve: MeasuredCurve, color) -> None:
    finite = np.isfinite(curve.y)
    ax.plot(curve.x[finite], curve.y[finite], "o", color=color, ms=4)


def draw_fit(
    ax: plt.Axes, curve: MeasuredCurve, fit: PhaseFit, color, label: str, linestyle: str = "-"
) -> None:
    xs = np.linspace(curve.x.min(), curve.x.max(), 200)
    ax.plot(xs, fit.predict(xs), linestyle=linestyle, color=color, lw=1.2, label=label)
    ax.plot(
        [fit.s0],
        fit.predict(fit.s0),
        "*",
        ms=14,
        mec="black",
        color=color if fit.has_transition else "none",
    )


def plot_fits(
    fits: list[tuple[MeasuredCurve, PhaseFit]], band: tuple[float, float] | None = None
) -> plt.Figure:
    """One panel per fitted curve (``mpt fit --plot``), three to a row: its points, the
    fitted curve, s0 (a star, hollow without a transition) with its 95% interval shaded,
    and ``band`` (the study's range of s0, in compression x) hatched when given."""
    cols = min(3, len(fits))
    rows = -(-len(fits) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 4 * rows), squeeze=False)
    for ax in axes.flat[len(fits) :]:
        ax.set_visible(False)
    for ax, (curve, fit) in zip(axes.flat, fits, strict=False):
        draw_points(ax, curve, "C0")
        draw_fit(ax, curve, fit, "C0", "fit")
        ax.axvspan(fit.s0_low, fit.s0_high, color="C1", alpha=0.2, label="s0, 95% interval")
        if band is not None:
            draw_band(ax, band)
        key = curve.key
        ax.set(xlabel=AXIS_LABELS[key.axis], ylabel=f"{key.dataset} {key.metric}")
        finite = curve.y[np.isfinite(curve.y)]
        if key.metric == "ppl" and finite.max() > LOG_SPAN * finite.min():
            ax.set_yscale("log")  # a collapse spans decades; a flat curve reads better linear
        ax.set_title(f"{key.model}, {key.dataset}: {curve_label(curve)}", fontsize=9)
        plain_ticks(ax)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def family_of(model: str) -> str:
    """'qwen2.5-7b' -> 'qwen2.5', 'gemma3-12b-it' -> 'gemma3', 'llama2-70b' -> 'llama2'."""
    return re.split(r"-\d", model, maxsplit=1)[0]


def plot_quantization(points: list[Point]) -> plt.Figure:
    by_family: dict[str, dict[str, list[Point]]] = defaultdict(lambda: defaultdict(list))
    for p in points:
        if len(p.spec.stages) <= 1:
            by_family[family_of(p.model)][p.model].append(p)
    families = sorted(by_family)
    cols = min(3, len(families))
    rows = -(-len(families) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 4 * rows), squeeze=False)
    for ax in axes.flat[len(families) :]:
        ax.set_visible(False)
    for ax, family in zip(axes.flat, families, strict=False):
        for style, (model, items) in zip(styles(), sorted(by_family[family].items()), strict=False):
            items.sort(key=lambda p: p.size_gb)
            sizes, values = [p.size_gb for p in items], [p.value for p in items]
            ax.plot(
                sizes, values, color=style.colour, ls=style.linestyle, marker="o", ms=3, label=model
            )
            two_bit = [p for p in items if p.spec.stages and nominal_bits(p) == 2]
            ax.plot([p.size_gb for p in two_bit], [p.value for p in two_bit], "rx", ms=8)
        ax.set(xscale="log", xlabel="size (GB, log)", ylabel="WikiText-2 PPL", title=family)
        plain_ticks(ax)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle("Quantized models: PPL vs size (red x: 2-bit schemes)")
    fig.tight_layout()
    return fig


def nominal_bits(point: Point) -> int | None:
    stage = point.spec.stages[-1]
    return stage.bits if stage.bits is not None else scheme_bits(stage.scheme or "")


def combined_grid(points: list[Point]) -> Grid | None:
    """The 2-D grid of a file, when it has one (both stages in enough cells)."""
    two_stage = [p for p in points if len(p.spec.stages) == 2]
    if len(two_stage) < MIN_GRID_CELLS:
        return None
    try:
        return build_grid(select_setting(points, None, "wikitext2"))
    except FitError:
        return None


def grid_matrix(grid: Grid) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
    """Ratios, quantization levels ordered by bits, and log10 PPL on that lattice."""
    ratios = np.array(sorted({c.ratio for c in grid.cells}))
    levels = sorted({c.quant for c in grid.cells}, key=lambda q: level_bits(grid, q))
    z = np.full((len(levels), ratios.size), np.nan)
    for cell in grid.cells:
        z[levels.index(cell.quant), int(np.searchsorted(ratios, cell.ratio))] = np.log10(cell.value)
    bits = np.array([level_bits(grid, q) for q in levels])
    return ratios, levels, bits, z


def level_bits(grid: Grid, quant: str) -> float:
    cell = next(c for c in grid.cells if c.quant == quant)
    return 16.0 * (1.0 - cell.x_bits)


def plot_combined(grid: Grid, title: str) -> plt.Figure:
    ratios, levels, bits, z = grid_matrix(grid)
    fig = plt.figure(figsize=(16, 6))
    fig.subplots_adjust(wspace=0.35)
    ax3 = fig.add_subplot(1, 2, 1, projection="3d")
    rr, bb = np.meshgrid(ratios, np.arange(len(levels)))
    ax3.plot_surface(rr, bb, z, cmap="viridis", edgecolor="k", lw=0.2)
    ax3.set(xlabel="ratio (pruning or rank)", zlabel="log10 PPL", yticks=range(len(levels)))
    ax3.set_yticklabels(levels, fontsize=6)
    ax3.set_title(f"a) {title}: PPL surface")
    ax2 = fig.add_subplot(1, 2, 2)
    filled = ax2.contourf(ratios, bits, z, levels=20, cmap="viridis")
    fig.colorbar(filled, ax=ax2, label="log10 PPL")
    draw_lines(ax2, grid)
    ax2.set(xlabel="ratio (pruning or rank)", ylabel="bits per weight (stated sizes, else nominal)")
    ax2.set_yticks(bits, [f"{b:.1f} {q}" for b, q in zip(bits, levels, strict=True)], fontsize=6)
    ax2.set_title("b) contour, Pareto front (red), phase-transition line (orange)")
    ax2.legend(fontsize=7, loc="upper center")
    return fig


def draw_lines(ax: plt.Axes, grid: Grid) -> None:
    front = pareto_front(grid.cells)
    # the front runs in size order, which zigzags across this lattice: points, not a line
    ax.plot(
        [c.ratio for c in front],
        [16 * (1 - c.x_bits) for c in front],
        "ro",
        ms=6,
        mfc="none",
        label="Pareto front (lowest PPL at its size)",
    )
    ptl = sorted(
        (fit.s0, level_bits(grid, quant))
        for (_, quant), fit in grid.along_ratio.items()
        if fit is not None and fit.has_transition
    )
    ptl_bits = sorted(
        (ratio, fit.s0_bits)
        for (_, ratio), fit in grid.along_bits.items()
        if fit is not None and fit.has_transition and fit.s0_bits > 1
    )
    if ptl:
        ax.plot(
            *zip(*sorted(ptl, key=lambda p: p[1]), strict=True),
            "o-",
            color="orange",
            label="PTL along pruning",
        )
    if ptl_bits:
        ax.plot(*zip(*ptl_bits, strict=True), "s--", color="orange", ms=3, label="PTL along bits")
