"""propose_next: scaffold first, then the knee; never outside the range or on a measured level."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mpt_core.analysis.adaptive import MIN_STEP, propose_next
from mpt_core.errors import FitError


def knee(x: float, s0: float = 0.55) -> float:
    return (5 + 3 * min(x, s0) ** 2) * math.exp(14 * max(x - s0, 0.0))


def test_the_scaffold_takes_both_ends_then_the_widest_gap() -> None:
    assert propose_next([], 0.0, 0.8) == 0.0
    assert propose_next([(0.0, 5.0)], 0.0, 0.8) == 0.8
    assert propose_next([(0.0, 5.0), (0.8, 90.0)], 0.0, 0.8) == pytest.approx(0.4)
    assert propose_next([(0.0, 5.0), (0.4, 6.0), (0.8, 90.0)], 0.0, 0.8) == pytest.approx(0.2)


def test_before_a_fit_is_possible_it_bisects_the_steepest_gap() -> None:
    points = [(x, knee(x)) for x in (0.0, 0.2, 0.4, 0.8)]
    assert propose_next(points, 0.0, 0.8) == pytest.approx(0.6)


def test_a_collapsed_point_marks_the_steepest_gap() -> None:
    points = [(0.0, 5.0), (0.3, 5.5), (0.6, 6.0), (0.9, math.nan)]
    assert propose_next(points, 0.0, 0.9) == pytest.approx(0.75)


def test_after_a_fit_it_measures_next_to_the_knee() -> None:
    points = [(x, knee(x)) for x in np.linspace(0.0, 0.8, 6)]
    nxt = propose_next(points, 0.0, 0.8)
    assert 0.48 - 0.08 < nxt < 0.64 + 0.08  # around s0 = 0.55, between its measured neighbours
    assert min(abs(nxt - x) for x, _ in points) >= MIN_STEP * 0.8


def test_a_sweep_of_proposals_stays_in_range_and_never_repeats() -> None:
    points: list[tuple[float, float]] = []
    for _ in range(9):
        x = propose_next(points, 0.1, 0.8)
        assert 0.1 <= x <= 0.8
        assert all(abs(x - p) >= MIN_STEP * 0.7 for p, _ in points)
        points.append((x, knee(x)))
    near_knee = [x for x, _ in points if abs(x - 0.55) < 0.1]
    assert len(near_knee) >= 3  # a uniform 9-point sweep over [0.1, 0.8] has 2 there


@pytest.mark.parametrize(
    ("points", "lo", "hi", "message"),
    [
        ([], 0.5, 0.5, "is empty"),
        ([(0.9, 5.0)], 0.0, 0.8, "must be finite and inside"),
        ([(math.nan, 5.0)], 0.0, 0.8, "must be finite and inside"),
    ],
)
def test_bad_input_is_a_fit_error(points, lo, hi, message) -> None:
    with pytest.raises(FitError, match=message):
        propose_next(points, lo, hi)
