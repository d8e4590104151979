"""Additivity of pipelines: measured increase vs the sum of the stages' increases."""

from __future__ import annotations

import csv

from hypothesis import given
from hypothesis import strategies as st

from mpt_core.analysis.additivity import interactions, median_ratio
from mpt_core.analysis.combine import Grid, cell_from_point
from mpt_core.analysis.curves import Point
from mpt_core.baselines import HEADER
from mpt_core.spec import Spec

RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5)
LEVELS = (8, 6, 4, 3)
REFERENCE = 10.0


def grid_points(prune_cost, quant_cost, combine) -> list[Point]:
    def point(spec: str, value: float) -> Point:
        return Point("m", "wikitext2", "ppl", "512", Spec.parse(spec), value)

    points = [point("dense", REFERENCE)]
    points += [point(f"magnitude:{r}", REFERENCE + prune_cost(r)) for r in RATIOS]
    points += [point(f"rtn:{b}", REFERENCE + quant_cost(b)) for b in LEVELS]
    points += [
        point(f"magnitude:{r}+rtn:{b}", REFERENCE + combine(prune_cost(r), quant_cost(b)))
        for r in RATIOS
        for b in LEVELS
    ]
    return points


def unfitted_grid(points: list[Point]) -> Grid:
    """The cells without phase-transition lines (fitting is not under test here)."""
    return Grid([cell_from_point(p) for p in points], REFERENCE, {}, {})


costs = st.floats(min_value=0.01, max_value=5.0)


@given(st.lists(costs, min_size=5, max_size=5), st.lists(costs, min_size=4, max_size=4))
def test_stages_whose_increases_add_have_ratio_one(prune, quant):
    points = grid_points(
        lambda r: prune[RATIOS.index(r)], lambda b: quant[LEVELS.index(b)], lambda a, b: a + b
    )
    found = interactions(unfitted_grid(points))
    assert len(found) == len(RATIOS) * len(LEVELS)
    for item in found:
        assert abs(item.ratio - 1.0) < 1e-9


@given(st.lists(costs, min_size=5, max_size=5), st.lists(costs, min_size=4, max_size=4))
def test_stages_that_compound_have_ratio_above_one(prune, quant):
    def compound(a: float, b: float) -> float:  # multiplicative PPL: (1 + a/ref)(1 + b/ref)
        return a + b + a * b / REFERENCE

    points = grid_points(
        lambda r: prune[RATIOS.index(r)], lambda b: quant[LEVELS.index(b)], compound
    )
    found = interactions(unfitted_grid(points))
    assert all(item.ratio > 1.0 for item in found)
    assert median_ratio(found) > 1.0


def test_cells_without_both_single_stages_are_left_out():
    points = grid_points(lambda r: r, lambda b: 1 / b, lambda a, b: a + b)
    points = [p for p in points if str(p.spec) != "magnitude:0.3"]
    specs = {item.spec for item in interactions(unfitted_grid(points))}
    assert not any(spec.startswith("magnitude:0.3+") for spec in specs)
    assert "magnitude:0.2+rtn:4" in specs


def test_cli_reports_smallest_configurations_and_additivity(cli, tmp_path):
    path = tmp_path / "grid.csv"
    points = grid_points(lambda r: 4 * r**3, lambda b: 8 / b**2, lambda a, b: a + b)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        for p in points:
            writer.writerow(
                [p.model, p.dataset, str(p.spec), p.metric, p.value, "", "", "", p.seqlen, "test"]
            )
    result = cli("combined", str(path))
    assert result.returncode == 0, result.stderr
    assert "| +5% | `" in result.stdout and "| +10% | `" in result.stdout
    assert "median ratio: 1.00 over 20 pipelines" in result.stdout
