"""The curves of a baseline table: a method's rows over its ratios (or bits), with dense.

Each becomes one curve test (``test_ptp[...]``): the plugin measures every point
and compares the fitted phase-transition point with the baseline's.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from mpt_core.analysis.curves import Point, group_curves
from mpt_core.analysis.fit import N_PARAMS
from mpt_core.baselines import BaselineRow
from mpt_core.spec import Spec


@dataclass(frozen=True)
class BaselineCurve:
    label: str  # the varying method with its options, e.g. "rtn[group=64]"
    x: np.ndarray  # compression: the ratio, or 1 - bits/16
    rows: tuple[BaselineRow, ...]  # in the order of x

    @property
    def test_id(self) -> str:
        first = self.rows[0]
        return f"{first.model}-{first.dataset}-{self.label}"


def baseline_curves(rows: list[BaselineRow]) -> list[BaselineCurve]:
    """Single-method curves with enough points to fit (more than the model's parameters)."""
    by_table: dict[tuple, list[BaselineRow]] = defaultdict(list)
    for row in rows:
        if row.metric == "ppl":
            by_table[(row.tier, row.table)].append(row)
    found = []
    for table_rows in by_table.values():
        found += _curves_of(table_rows)
    return found


def _curves_of(rows: list[BaselineRow]) -> list[BaselineCurve]:
    lookup = {(row.model, row.dataset, str(row.seqlen), row.spec): row for row in rows}
    points = [
        Point(row.model, row.dataset, row.metric, str(row.seqlen), Spec.parse(row.spec), row.value)
        for row in rows
    ]
    curves = []
    for curve in group_curves(points):
        key = curve.key
        if key.others != "dense" or len(curve.specs) <= N_PARAMS:
            continue
        members = tuple(lookup[(key.model, key.dataset, key.seqlen, spec)] for spec in curve.specs)
        curves.append(BaselineCurve(key.method, np.asarray(curve.x, dtype=float), members))
    return curves
