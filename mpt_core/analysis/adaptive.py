"""Adaptive sweeps: choose each next compression level where it narrows the PTP most.

A uniform sweep spends most of its budget where the curve is boring. Here
the first points lay a coarse scaffold (both ends, then the largest gaps);
from then on each point bisects the knee: before the fitter can run, the gap
across which log y climbs the most; once it can, the widest hole inside the
current 95% interval of s0 (``mpt_core.analysis.fit``), which is where a measurement
moves the profile likelihood most. A sweep calls ``propose_next`` with every
point measured so far, measures the returned level, and repeats.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from mpt_core.analysis.fit import N_PARAMS, fit_phase_transition
from mpt_core.errors import FitError

SCAFFOLD = 4  # points laid evenly before the knee search starts
MIN_STEP = 1e-3  # relative to hi - lo: closer levels are not worth measuring twice


def propose_next(
    points: Sequence[tuple[float, float]], lo: float, hi: float, *, direction: str = "up"
) -> float:
    """The next compression level in [lo, hi] to measure, given (x, y) measured so far.

    y may be inf or nan for a collapsed model. x is compression (a ratio, or
    1 - bits/16); the caller converts a chosen level to its own units.
    """
    if not hi > lo:
        raise FitError(f"the sweep range [{lo}, {hi}] is empty")
    xs = np.array([float(x) for x, _ in points])
    ys = np.array([float(y) for _, y in points])
    if np.any(~np.isfinite(xs)) or np.any((xs < lo) | (xs > hi)):
        raise FitError(f"measured levels {xs.tolist()} must be finite and inside [{lo}, {hi}]")
    if len(set(xs.tolist())) < SCAFFOLD:
        return scaffold_next(xs, lo, hi)
    if len(set(xs.tolist())) >= N_PARAMS:
        target = interval_to_narrow(xs, ys, lo, hi, direction)
        if target is not None:
            return widest_hole(xs, *target, lo, hi)
    return steepest_gap_midpoint(xs, ys, direction)


def scaffold_next(xs: np.ndarray, lo: float, hi: float) -> float:
    """Both ends first, then the middle of the widest gap."""
    for end in (lo, hi):
        if not np.any(np.isclose(xs, end)):
            return end
    return widest_hole(xs, lo, hi, lo, hi)


def steepest_gap_midpoint(xs: np.ndarray, ys: np.ndarray, direction: str) -> float:
    """Bisect the gap across which log y moves the most (a collapsed point moves it most)."""
    order = np.argsort(xs)
    xs, ys = xs[order], ys[order]
    sign = 1.0 if direction == "up" else -1.0
    finite = np.isfinite(ys)
    worst = np.nanmax(np.abs(np.log(ys[finite]))) * 2 + 1 if finite.any() else 1.0
    logs = np.where(finite, np.log(np.where(finite, ys, 1.0)), sign * worst)
    rise = sign * np.diff(logs)
    width = np.diff(xs)
    rise = np.where(width > MIN_STEP * (xs[-1] - xs[0]) * 2, rise, -math.inf)
    i = int(np.argmax(rise))
    return float(0.5 * (xs[i] + xs[i + 1]))


def interval_to_narrow(
    xs: np.ndarray, ys: np.ndarray, lo: float, hi: float, direction: str
) -> tuple[float, float] | None:
    """The current 95% interval of s0, widened halfway to the measured levels around it.

    Widening puts the next points on both branches near the knee: s0 is where
    the two branches meet, so each branch must be pinned close to it. None
    when no transition is seen yet (the caller bisects instead).
    """
    try:
        fit = fit_phase_transition(xs, ys, direction=direction)
    except FitError:
        return None
    if not fit.has_transition:
        return None
    below = xs[xs < fit.s0_low]
    above = xs[xs > fit.s0_high]
    low = 0.5 * (fit.s0_low + below.max()) if below.size else lo
    high = 0.5 * (fit.s0_high + above.min()) if above.size else hi
    return low, high


def widest_hole(xs: np.ndarray, low: float, high: float, lo: float, hi: float) -> float:
    """Middle of the widest stretch of [low, high] that holds no measured level."""
    inside = xs[(xs > low) & (xs < high)]
    edges = np.unique(np.concatenate([[low, high], inside]))
    gaps = np.diff(edges)
    i = int(np.argmax(gaps))
    candidate = float(0.5 * (edges[i] + edges[i + 1]))
    if np.min(np.abs(xs - candidate)) < MIN_STEP * (hi - lo):
        return widest_hole(xs, lo, hi, lo, hi) if (low, high) != (lo, hi) else candidate
    return candidate
