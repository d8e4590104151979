"""Adaptive vs uniform sweeps: the width of the s0 interval at the same number of evaluations.

Synthetic curves are drawn from the fitter's model with 2% multiplicative noise
(log-normal, about the spread of repeated PPL runs); study curves are the
study's points interpolated (PCHIP on log PPL) with 0.5% noise, the size of the
stderr llama.cpp prints. Each evaluation budget is spent either on an evenly
spaced grid or one point at a time by ``mpt_core.analysis.adaptive.propose_next``.

    .venv/bin/python scripts/bench_adaptive.py [--draws 8] [--budget 10]
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy.interpolate import PchipInterpolator
from tabulate import tabulate

from mpt_core.analysis.adaptive import propose_next
from mpt_core.analysis.curves import group_curves, read_points
from mpt_core.analysis.fit import fit_phase_transition

STUDY = Path(__file__).resolve().parent.parent / "baselines" / "study"
STUDY_CURVES = [
    ("table1.csv", "sleb"),
    ("table1.csv", "llm_pruner"),
    ("table2.csv", "magnitude"),
    ("table2.csv", "wanda"),
    ("table2.csv", "sparsegpt"),
    ("table7.csv", "asvd"),
    ("table7.csv", "svd_llm"),
]


def width(xs: np.ndarray, ys: np.ndarray) -> tuple[float, float]:
    fit = fit_phase_transition(xs, ys)
    return fit.s0_high - fit.s0_low, fit.s0


def uniform_run(measure: Callable, lo: float, hi: float, budget: int) -> tuple[float, float]:
    xs = np.linspace(lo, hi, budget)
    return width(xs, np.array([measure(x) for x in xs]))


def adaptive_run(measure: Callable, lo: float, hi: float, budget: int) -> tuple[float, float]:
    points: list[tuple[float, float]] = []
    for _ in range(budget):
        x = propose_next(points, lo, hi)
        points.append((x, measure(x)))
    return width(np.array([p[0] for p in points]), np.array([p[1] for p in points]))


def synthetic(rng: np.random.Generator, noise: float) -> tuple[str, Callable, float, float]:
    s0 = rng.uniform(0.35, 0.7)
    c, a, b, k = rng.uniform(4, 12), rng.uniform(1, 6), rng.uniform(1, 3), rng.uniform(8, 20)

    def measure(x: float) -> float:
        clean = (c + a * min(x, s0) ** b) * np.exp(k * max(x - s0, 0.0))
        return float(clean * np.exp(rng.normal(0.0, noise)))

    return f"synthetic s0={s0:.3f}", measure, 0.0, 0.85


def study_curve(
    rng: np.random.Generator, table: str, method: str
) -> tuple[str, Callable, float, float]:
    curves = group_curves([p for p in read_points(STUDY / table) if p.metric == "ppl"])
    curve = next(c for c in curves if c.key.label == method and c.key.dataset == "wikitext2")
    finite = np.isfinite(curve.y)
    log_ppl = PchipInterpolator(curve.x[finite], np.log(curve.y[finite]))

    def measure(x: float) -> float:
        return float(np.exp(log_ppl(x) + rng.normal(0.0, 0.005)))

    return (
        f"study {table[:-4]} {method}",
        measure,
        float(curve.x[finite][0]),
        float(curve.x[finite][-1]),
    )


def compare(case: tuple[str, Callable, float, float], budget: int) -> list:
    name, measure, lo, hi = case
    wu, su = uniform_run(measure, lo, hi, budget)
    wa, sa = adaptive_run(measure, lo, hi, budget)
    return [name, budget, f"{su:.3f}", f"{wu:.4f}", f"{sa:.3f}", f"{wa:.4f}", wu / wa]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=8, help="synthetic curves")
    parser.add_argument("--budget", type=int, default=10, help="evaluations per sweep")
    parser.add_argument("--noise", type=float, default=0.02, help="synthetic log-noise sd")
    parser.add_argument("--no-study", action="store_true", help="synthetic curves only")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows = [compare(synthetic(rng, args.noise), args.budget) for _ in range(args.draws)]
    if not args.no_study:
        rows += [compare(study_curve(rng, t, m), args.budget) for t, m in STUDY_CURVES]
    headers = [
        "curve",
        "n",
        "s0 uniform",
        "width uniform",
        "s0 adaptive",
        "width adaptive",
        "ratio",
    ]
    print(tabulate(rows, headers, tablefmt="github", floatfmt=".4f"))
    synth = [r[-1] for r in rows if r[0].startswith("synthetic")]
    study = [r[-1] for r in rows if r[0].startswith("study")] or [float("nan")]
    print(
        f"\nmedian width ratio (uniform / adaptive): synthetic {statistics.median(synth):.2f}, "
        f"study {statistics.median(study):.2f}, all {statistics.median(synth + study):.2f}"
    )


if __name__ == "__main__":
    main()
