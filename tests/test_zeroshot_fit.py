"""The phase-transition fitter on accuracy curves: accuracy falls, and falls to chance.

``direction="down"`` flips the model; ``floor=`` fits the accuracy above chance, so a
curve that collapses onto chance (0.25) puts s0 at its knee rather than past it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from mpt_core.analysis.fit import above_floor, fit_phase_transition
from mpt_core.cli import main
from mpt_core.errors import FitError

CHANCE = 0.25
KNEE = 0.5
X = np.linspace(0.0, 0.85, 10)
TABLE5 = Path(__file__).resolve().parents[1] / "baselines" / "study" / "table5.csv"
BITS = [2, 3, 4, 5, 6, 8, 16]
QWEN_1_5B_ARC_C = [0.47, 0.68, 0.75, 0.75, 0.74, 0.75, 0.77]  # Table 5, 2..16 bits


def collapsing_to_chance(x: np.ndarray) -> np.ndarray:
    """A gentle decline, then an exponential fall that stops at chance."""
    before = 0.6 - 0.1 * np.minimum(x, KNEE) ** 2
    return np.maximum(CHANCE, before * np.exp(-6 * np.maximum(x - KNEE, 0.0)))


def test_with_the_chance_floor_the_interval_holds_the_true_knee():
    fit = fit_phase_transition(X, collapsing_to_chance(X), direction="down", floor=CHANCE)
    assert fit.has_transition
    assert fit.s0_low <= KNEE <= fit.s0_high
    assert fit.n_censored == 3  # the points at chance
    assert np.all(fit.predict(X) >= CHANCE)


def test_without_the_floor_the_knee_comes_out_late():
    """Why the floor exists: decaying to zero through points stuck at chance bends late."""
    fit = fit_phase_transition(X, collapsing_to_chance(X), direction="down")
    assert fit.s0_low > KNEE


def test_table5_qwen_1_5b_arc_challenge_collapses_between_3_and_4_bits():
    fit = fit_phase_transition(BITS, QWEN_1_5B_ARC_C, x_kind="bits", direction="down", floor=0.25)
    assert fit.has_transition and fit.a < 0 and fit.k < 0
    assert 3.0 < fit.s0_bits < 3.5
    assert fit.predict(2.0)[0] == pytest.approx(0.47, rel=0.02)
    assert fit.predict(16.0)[0] == pytest.approx(0.76, abs=0.02)
    rising = fit_phase_transition(BITS, QWEN_1_5B_ARC_C, x_kind="bits", direction="up")
    assert not rising.has_transition  # the wrong direction sees no transition at all


def test_points_at_or_below_chance_count_as_collapsed():
    shifted = above_floor([0.6, 0.25, 0.2, math.inf], CHANCE)
    assert shifted[0] == pytest.approx(0.35)
    assert np.isnan(shifted[1]) and np.isnan(shifted[2]) and np.isinf(shifted[3])
    with pytest.raises(FitError, match="floor must be a finite value >= 0"):
        above_floor([0.5], -0.1)


def test_mpt_fit_fits_accuracy_falling_to_chance_by_default(capsys):
    assert main(["fit", str(TABLE5), "--metric", "acc"]) == 0
    rows = {tuple(line.split()[:2]): line for line in capsys.readouterr().out.splitlines()[2:]}
    assert " yes " in rows[("qwen2.5-1.5b", "arc_challenge")]
    assert "3.21 bits" in rows[("qwen2.5-1.5b", "arc_challenge")]
    # Qwen2.5-0.5B's MMLU never rises above chance: nothing to fit
    assert "only 0 finite points" in rows[("qwen2.5-0.5b", "mmlu")]
