"""Is pruning x quantization orthogonal? Each pipeline's increase vs its stages' increases.

The study claims the redundancies that pruning and quantization remove are
orthogonal: below both phase-transition points, the metric increase of
``prune + quantize`` is about the sum of the increases of each stage alone. For
every two-stage cell of a grid whose two single-stage cells were measured too:

    measured = value(r, q) - reference
    summed   = (value(r) - reference) + (value(q) - reference)

``ratio = measured / summed`` is 1 for exactly additive stages, above 1 when
they compound. The increases are in the metric's own units (PPL points), so the
ratio is the same whether increases are absolute or relative to the reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mpt_core.analysis.combine import FP16, Grid, safety
from mpt_core.errors import FitError


@dataclass(frozen=True)
class Interaction:
    spec: str
    measured: float  # increase of the pipeline over the reference
    summed: float  # sum of the increases of its two stages alone
    safety: str  # below both phase-transition points: "yes", "no" or "unfitted"

    @property
    def safe(self) -> bool:
        return self.safety == "yes"

    @property
    def ratio(self) -> float:
        return self.measured / self.summed if self.summed > 0 else float("nan")


def interactions(grid: Grid) -> list[Interaction]:
    """The interaction of every two-stage cell whose single stages are in the grid."""
    if grid.reference is None:
        raise FitError("the grid has no uncompressed ('dense') point to measure increases from")
    singles = {
        (cell.method, cell.ratio, cell.quant): cell.value
        for cell in grid.cells
        if cell.quant == FP16 or cell.ratio == 0.0
    }
    found = []
    for cell in grid.cells:
        if cell.quant == FP16 or cell.ratio == 0.0:
            continue
        pruned = singles.get((cell.method, cell.ratio, FP16))
        quantized = singles.get(("", 0.0, cell.quant))
        if pruned is None or quantized is None:
            continue
        summed = (pruned - grid.reference) + (quantized - grid.reference)
        found.append(
            Interaction(cell.spec, cell.value - grid.reference, summed, safety(grid, cell))
        )
    return found


def median_ratio(found: list[Interaction]) -> float:
    """The median measured/summed ratio over cells with a positive summed increase."""
    ratios = [item.ratio for item in found if item.summed > 0]
    return float(np.median(ratios)) if ratios else float("nan")
