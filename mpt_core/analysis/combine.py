"""Combined compression: a pruning (or rank) ratio x a quantization level grid.

The study's Tables 8-10 and Fig. 5: every cell has a size relative to the FP16
model and a metric. From the grid we derive

- the Pareto front: the cells no smaller cell beats (lowest PPL at each size);
- the phase-transition line (PTL): the PTP along the ratio axis for each
  quantization level, and the PTP along the bits axis for each ratio;
- the joint safe region: cells below both PTPs that apply to them;
- a recommendation: the smallest cell within a budget on the metric's increase
  over the uncompressed model.

Sizes come from the source where it states them (a results record's
footprint, the study's ``pct_fp16`` column); otherwise they are nominal,
(1 - ratio) * bits / 16, and marked so.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, replace

import numpy as np

from mpt_core.analysis.curves import Point, stage_x
from mpt_core.analysis.fit import PhaseFit, fit_phase_transition
from mpt_core.errors import FitError

FP16 = "fp16"


@dataclass(frozen=True)
class Cell:
    """One configuration of the grid."""

    spec: str
    method: str  # the ratio stage's method ("" when absent)
    ratio: float  # 0 when the ratio stage is absent
    quant: str  # the quantization stage as written, or "fp16"
    x_bits: float  # 1 - bits/16 (0 for fp16); from the measured size where stated
    value: float
    size: float  # fraction of the FP16 model
    measured_size: bool


@dataclass
class Grid:
    """The cells of one (model, dataset, metric) setting and their transition lines."""

    cells: list[Cell]
    reference: float | None  # the metric of the uncompressed model, if measured
    along_ratio: dict[tuple[str, str], PhaseFit | None]  # (method, quant) -> PTP
    along_bits: dict[tuple[str, float], PhaseFit | None]  # (method, ratio) -> PTP


def cell_from_point(point: Point) -> Cell | None:
    """A cell for a spec of at most one ratio stage and one quantization stage."""
    ratio_stages, bits_stages = [], []
    for stage in point.spec.stages:
        place = stage_x(stage)
        if place is None:
            return None
        (ratio_stages if place[0] == "ratio" else bits_stages).append((stage, place[1]))
    if len(ratio_stages) > 1 or len(bits_stages) > 1:
        return None
    method, ratio = (ratio_stages[0][0].method, ratio_stages[0][1]) if ratio_stages else ("", 0.0)
    quant, x_bits = (str(bits_stages[0][0]), bits_stages[0][1]) if bits_stages else (FP16, 0.0)
    nominal = (1.0 - ratio) * (1.0 - x_bits)
    return Cell(
        spec=str(point.spec),
        method=method,
        ratio=ratio,
        quant=quant,
        x_bits=x_bits,
        value=point.value,
        size=nominal if point.size is None else point.size,
        measured_size=point.size is not None,
    )


def select_setting(points: list[Point], model: str | None, dataset: str | None) -> list[Point]:
    """The points of one (model, dataset, metric); several left is an error that lists them."""
    chosen = [
        p
        for p in points
        if (model is None or p.model == model) and (dataset is None or p.dataset == dataset)
    ]
    settings = sorted({p.setting for p in chosen})
    if not settings:
        raise FitError(f"no points for model={model or '*'} dataset={dataset or '*'}")
    if len(settings) > 1:
        names = "; ".join(f"{m} {d} {metric} seqlen={s}" for m, d, metric, s in settings)
        raise FitError(f"several settings ({names}): choose one with --model / --dataset")
    return chosen


def build_grid(points: list[Point], direction: str = "up") -> Grid:
    """Cells, the uncompressed reference, and the PTP lines along both axes."""
    cells = with_measured_bits([cell for cell in map(cell_from_point, points) if cell is not None])
    if not cells:
        raise FitError("no point is a ratio stage, a quantization stage, both, or dense")
    dense = [c.value for c in cells if c.ratio == 0.0 and c.quant == FP16]
    return Grid(
        cells=cells,
        reference=dense[0] if dense else None,
        along_ratio=fit_lines(cells, lambda c: (c.method, c.quant), lambda c: c.ratio, direction),
        along_bits=fit_lines(cells, lambda c: (c.method, c.ratio), lambda c: c.x_bits, direction),
    )


def with_measured_bits(cells: list[Cell]) -> list[Cell]:
    """Place each quantization level at its measured size rather than its nominal bits.

    Q3_K_M is "3-bit" by name but stores ~3.6 bits per weight; the grid's
    bits axis uses 1 - size / (1 - ratio), the median over the level's cells
    with a stated size. Dividing by (1 - ratio) assumes the size shrinks with
    the pruned fraction, as the study's sizes do; a format that stores the
    zeros densely (llama.cpp's) keeps every pruned cell at the size of the
    quantization-only cell, and there the size itself is the level's. The
    median shrugs off single misprinted sizes (the study's Table 10 has two,
    ERRATA E37/E38).
    """
    sized: dict[str, list[Cell]] = defaultdict(list)
    for cell in cells:
        if cell.measured_size and cell.quant != FP16 and cell.ratio < 1.0:
            sized[cell.quant].append(cell)
    measured = {level: 1.0 - level_size(members) for level, members in sized.items()}
    return [replace(c, x_bits=measured.get(c.quant, c.x_bits)) for c in cells]


def level_size(members: list[Cell]) -> float:
    """The relative size of a quantization level over its cells (see with_measured_bits)."""
    alone = [c.size for c in members if c.ratio == 0.0]
    pruned = [c.size for c in members if c.ratio > 0.0]
    stores_zeros = bool(alone and pruned) and all(
        math.isclose(size, alone[0], rel_tol=0.01) for size in pruned
    )
    if stores_zeros:
        return float(np.median(alone + pruned))
    return float(np.median([c.size / (1.0 - c.ratio) for c in members]))


def fit_lines(cells: list[Cell], key, x_of, direction: str) -> dict:
    """A PTP per line of the grid; None where the line has too few points to fit.

    A cell whose ratio stage is absent (method "") lies at ratio 0 of every
    method's line through it; it forms a line of its own only where no method
    has one (the quantization-only curve at ratio 0).
    """
    lines: dict = defaultdict(list)
    for cell in cells:
        if cell.method:
            lines[key(cell)].append(cell)
    for cell in cells:
        if not cell.method:
            joined = [k for k in lines if k[0] and k[1:] == key(cell)[1:]]
            for name in joined or [key(cell)]:
                lines[name].append(cell)
    return {name: fit_or_none(members, x_of, direction) for name, members in lines.items()}


def fit_or_none(members: list[Cell], x_of, direction: str) -> PhaseFit | None:
    try:
        xs = [x_of(c) for c in members]
        return fit_phase_transition(xs, [c.value for c in members], direction=direction)
    except FitError:
        return None


def pareto_front(cells: list[Cell]) -> list[Cell]:
    """Cells that no cell of smaller or equal size beats, from small to large."""
    front: list[Cell] = []
    for cell in sorted(cells, key=lambda c: (c.size, c.value)):
        if not front or cell.value < front[-1].value:
            front.append(cell)
    return front


def is_safe(grid: Grid, cell: Cell) -> bool:
    """Below the PTP along ratio for its quantization and along bits for its ratio.

    A line with no transition in range (or too few points to tell) does not
    restrict the cell: there is no evidence of a collapse to stay below.
    """
    along_ratio = grid.along_ratio.get((cell.method, cell.quant))
    along_bits = grid.along_bits.get((cell.method, cell.ratio))
    below_ratio = not (along_ratio and along_ratio.has_transition) or cell.ratio <= along_ratio.s0
    below_bits = not (along_bits and along_bits.has_transition) or cell.x_bits <= along_bits.s0
    return below_ratio and below_bits


def safety(grid: Grid, cell: Cell) -> str:
    """ "no" past a PTP; "unfitted" where a line through the cell has too few points to fit
    (is_safe lets it pass: no evidence either way); else "yes"."""
    if not is_safe(grid, cell):
        return "no"
    lines = (
        grid.along_ratio.get((cell.method, cell.quant)),
        grid.along_bits.get((cell.method, cell.ratio)),
    )
    return "unfitted" if any(line is None for line in lines) else "yes"


def safe_region(grid: Grid) -> list[Cell]:
    return [cell for cell in grid.cells if is_safe(grid, cell)]


@dataclass(frozen=True)
class Recommendation:
    cell: Cell
    increase: float  # relative increase of the metric over the reference
    safe: bool
    candidates: int  # cells within the budget


def recommend(grid: Grid, max_increase: float, *, safe_only: bool = False) -> Recommendation:
    """The smallest cell whose metric is within ``max_increase`` of the uncompressed one."""
    if grid.reference is None:
        raise FitError("the grid has no uncompressed ('dense') point to measure increases from")
    limit = grid.reference * (1.0 + max_increase)
    within = [c for c in grid.cells if c.value <= limit and (not safe_only or is_safe(grid, c))]
    if not within:
        raise FitError(
            f"no configuration keeps the metric within +{100 * max_increase:g}% of "
            f"{grid.reference:g}; the best is {min(c.value for c in grid.cells):g}"
        )
    best = min(within, key=lambda c: (c.size, c.value))
    return Recommendation(best, best.value / grid.reference - 1.0, is_safe(grid, best), len(within))
