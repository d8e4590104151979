"""The fitter's contract: errors that say what is wrong, censoring, units, direction."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from mpt_core.analysis.fit import fit_phase_transition
from mpt_core.errors import FitError, MptError

X = np.linspace(0.0, 0.8, 9)


def model(x, c=5.0, a=3.0, b=2.0, s0=0.5, k=12.0):
    x = np.asarray(x, dtype=float)
    return (c + a * np.minimum(x, s0) ** b) * np.exp(k * np.maximum(x - s0, 0.0))


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (
            [0.1, 0.2, 0.3, 0.4],
            [5, 6, 7, 9],
            "too few points (4 distinct < 5 parameters",
        ),
        ([0.1, 0.2, math.nan, 0.4, 0.5], [5, 6, 7, 9, 20], "x must be finite"),
        ([0.1, 0.2, 0.2, 0.4, 0.5, 0.6], [5, 6, 7, 9, 20, 40], "x = 0.2 appears twice"),
        ([0.1, 0.2, 0.3, 0.4, 0.5], [5, 6, -7, 9, 20], "must be positive"),
        ([0.1, 0.2, 0.3, 0.4, 1.5], [5, 6, 7, 9, 20], "compression must lie in [0, 1)"),
        ([0.1, 0.2, 0.3], [5, 6, 7, 9], "x has 3 values but y has 4"),
    ],
)
def test_bad_input_raises_a_fit_error_that_says_what_is_wrong(x, y, message) -> None:
    with pytest.raises(FitError, match=re.escape(message)) as info:
        fit_phase_transition(x, y)
    assert isinstance(info.value, MptError) and "\n" not in str(info.value)


def test_identical_repeated_points_count_once() -> None:
    fit = fit_phase_transition(np.append(X, X[3]), np.append(model(X), model(X)[3]))
    assert fit.n_points == X.size


def test_collapsed_points_are_censored_above_the_last_finite_value() -> None:
    y = model(X)
    y[-2:] = [math.inf, math.nan]
    fit = fit_phase_transition(X, y)
    assert fit.n_censored == 2
    # the fit may not bend back below what was measured before the collapse
    assert np.all(fit.predict(X[-2:]) >= y[-3] * (1 - 1e-6))
    assert abs(fit.s0 - 0.5) <= X[1] - X[0]


def test_bits_are_converted_to_compression_and_back() -> None:
    bits = np.array([2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 16.0])
    ppl = np.array([14.63, 10.61, 10.01, 9.70, 9.68, 9.66, 9.66])  # Qwen2.5-1.5B, Table 5
    fit = fit_phase_transition(bits, ppl, x_kind="bits")
    assert fit.x_kind == "bits"
    assert fit.s0 == pytest.approx(1 - fit.s0_bits / 16)
    assert 2.0 < fit.s0_bits < 4.0
    assert fit.predict(2.0)[0] == pytest.approx(14.63, rel=0.05)


def test_falling_accuracy_is_fitted_with_direction_down() -> None:
    acc = 1.0 / model(X)  # a mirror image: gentle decline, then exponential decay
    fit = fit_phase_transition(X, acc, direction="down")
    assert fit.has_transition
    assert abs(fit.s0 - 0.5) <= X[1] - X[0]
    assert fit.a < 0 and fit.k < 0
    assert np.all(np.diff(fit.predict(np.linspace(0, 0.85, 50))) <= 0)


def test_unknown_direction_and_x_kind_are_rejected() -> None:
    with pytest.raises(FitError, match="direction"):
        fit_phase_transition(X, model(X), direction="sideways")
    with pytest.raises(FitError, match="x_kind"):
        fit_phase_transition(X, model(X), x_kind="percent")


def test_too_few_points_for_any_interval_gives_the_whole_range() -> None:
    x = X[:5]
    fit = fit_phase_transition(x, model(x, s0=0.3))
    # five points, five parameters: no residual degrees of freedom to locate s0
    assert (fit.s0_low, fit.s0_high) == (x[1], x[-1])


def test_wanda_table2_transition_lies_between_50_and_70_percent() -> None:
    ppl = [5.1352, 5.2269, 5.3609, 5.6434, 6.3075, 9.2307, 57.2495, 4262.4902]
    fit = fit_phase_transition(np.arange(1, 9) / 10, ppl)
    assert fit.has_transition and fit.bic_piecewise < fit.bic_power
    assert 0.5 < fit.s0_low <= fit.s0 <= fit.s0_high < 0.7
