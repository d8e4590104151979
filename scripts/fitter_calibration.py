"""How often the fitter calls a transition: on pure power laws (false) and on real knees.

Simulated curves on the study's grids (x = 0.05 ... 0.85, 17 points, or the 8 of a CPU-tier
ladder), multiplicative log-normal noise of ``--noise`` (0.5% by default): pure power laws
y = 1 + a x**b, and the same with an exponential past a knee s0 (k drawn so that the last
point is 3x to 100x the knee's value). Prints the distribution of the evidence (ΔBIC =
BIC(power law) − BIC(piecewise)) and, for each threshold, the false-transition and the
detection rate: the table docs/ptp.md quotes.

Usage: ``python scripts/fitter_calibration.py [--curves 200] [--noise 0.005] [--seed 0]``
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from mpt_core.analysis.fit import fit_phase_transition
from mpt_core.errors import FitError

THRESHOLDS = (0.0, 2.0, 4.0, 6.0, 10.0)


def power_law(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    a, b = rng.uniform(0.2, 3.0), rng.uniform(0.8, 3.0)
    return 1.0 + a * x**b


def with_knee(rng: np.random.Generator, x: np.ndarray) -> tuple[np.ndarray, float]:
    s0 = rng.uniform(0.3, 0.65)
    before = power_law(rng, np.minimum(x, s0))
    rise = rng.uniform(np.log(3.0), np.log(100.0))
    k = rise / max(x[-1] - s0, 1e-3)
    return before * np.exp(k * np.maximum(x - s0, 0.0)), s0


def evidence(x: np.ndarray, y: np.ndarray) -> float | None:
    try:
        fit = fit_phase_transition(x, y)
    except FitError:
        return None
    return fit.bic_power - fit.bic_piecewise


def simulate(curves: int, noise: float, points: int, seed: int) -> tuple[list, list]:
    rng = np.random.default_rng(seed)
    x = np.linspace(0.05, 0.85, points)
    null, knees = [], []
    for _ in range(curves):
        y = power_law(rng, x) * np.exp(rng.normal(0.0, noise, x.size))
        null.append(evidence(x, y))
        y, _s0 = with_knee(rng, x)
        knees.append(evidence(x, y * np.exp(rng.normal(0.0, noise, x.size))))
    return [e for e in null if e is not None], [e for e in knees if e is not None]


def rates(null: list[float], knees: list[float]) -> list[tuple[float, float, float]]:
    return [
        (t, float(np.mean(np.array(null) >= t)), float(np.mean(np.array(knees) >= t)))
        for t in THRESHOLDS
    ]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--curves", type=int, default=200)
    parser.add_argument("--noise", type=float, default=0.005)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print("| points | ΔBIC threshold | false transitions (pure power law) | detected knees |")
    print("|---|---|---|---|")
    for points in (17, 8):
        null, knees = simulate(args.curves, args.noise, points, args.seed)
        for threshold, false_rate, detected in rates(null, knees):
            print(f"| {points} | ≥ {threshold:g} | {false_rate:.1%} | {detected:.1%} |")
    print(f"\n{args.curves} curves of each kind per grid, noise {args.noise:.1%}, seed {args.seed}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
