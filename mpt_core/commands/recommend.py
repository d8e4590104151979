"""``mpt recommend``: the smallest configuration within a budget on the metric's increase.

Reads a baseline CSV (sizes from its ``size`` column) or a results JSONL
(sizes from each record's footprint) holding a pruning x quantization grid,
and prints the smallest cell whose metric stays within ``--max-ppl-increase``
of the uncompressed model, with where it lies against the phase-transition line.
"""

from __future__ import annotations

import argparse
import math

from mpt_core.analysis.combine import Grid, Recommendation, build_grid, recommend, select_setting
from mpt_core.analysis.curves import read_points
from mpt_core.commands.fit import DIRECTIONS
from mpt_core.errors import FitError, MptError


def parse_budget(text: str) -> float:
    """'5%' or '0.05' -> 0.05. A bare number of 1 or more is refused: '5' meant +5% far
    more often than +500%, and a budget of +100% or more is written with its '%'."""
    raw = text.strip()
    percent = raw.endswith("%")
    try:
        value = float(raw[:-1]) / 100 if percent else float(raw)
    except ValueError:
        raise MptError(
            f"--max-ppl-increase {text!r}: write a percentage (5%) or a fraction (0.05)"
        ) from None
    if not (value >= 0 and math.isfinite(value)):
        raise MptError(f"--max-ppl-increase {text!r} must be zero or more, and finite")
    if not percent and value >= 1:
        raise MptError(
            f"--max-ppl-increase {text!r} would allow +{100 * value:g}%: "
            f"write {raw}% or {value / 100:g} for +{value:g}%, or {100 * value:g}% if meant"
        )
    return value


def describe(grid: Grid, rec: Recommendation, budget: float) -> list[str]:
    cell = rec.cell
    along_ratio = grid.along_ratio.get((cell.method, cell.quant))
    along_bits = grid.along_bits.get((cell.method, cell.ratio))
    size_kind = "stated" if cell.measured_size else "nominal"
    lines = [
        f"reference (dense): {grid.reference:g}; budget +{100 * budget:g}% -> at most "
        f"{grid.reference * (1 + budget):.4g} ({rec.candidates} of {len(grid.cells)} cells within)",
        f"recommended: {cell.spec}  size {100 * cell.size:.2f}% of FP16 ({size_kind})  "
        f"value {cell.value:g} (+{100 * rec.increase:.1f}%)",
    ]
    if along_ratio is not None and along_ratio.has_transition:
        lines.append(
            f"  pruning PTP at {cell.quant}: {100 * along_ratio.s0:.1f}% (cell at "
            f"{100 * cell.ratio:g}%)"
        )
    if along_bits is not None and along_bits.has_transition:
        lines.append(
            f"  quantization PTP at ratio {cell.ratio:g}: {along_bits.s0_bits:.2f} bits "
            f"(cell at {16 * (1 - cell.x_bits):.2f} bits)"
        )
    lines.append(f"  inside the joint safe region: {'yes' if rec.safe else 'no'}")
    return lines


def register(subparsers) -> None:
    parser = subparsers.add_parser("recommend", help="smallest configuration within a budget")
    parser.add_argument("file", help="baseline CSV or results JSONL with a compression grid")
    parser.add_argument(
        "--max-ppl-increase",
        required=True,
        help="a percentage (5%%) or a fraction below 1 (0.05); a bare 5 is refused, "
        "as it would mean +500%%",
    )
    parser.add_argument("--metric", default="ppl")
    parser.add_argument("--model", default=None)
    parser.add_argument("--dataset", default=None)
    parser.add_argument("--safe-only", action="store_true", help="only cells below both PTPs")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    budget = parse_budget(args.max_ppl_increase)
    points = [p for p in read_points(args.file) if p.metric == args.metric]
    if not points:
        raise FitError(f"{args.file}: no points with metric {args.metric!r}")
    grid = build_grid(
        select_setting(points, args.model, args.dataset), DIRECTIONS.get(args.metric, "up")
    )
    rec = recommend(grid, budget, safe_only=args.safe_only)
    print("\n".join(describe(grid, rec, budget)))
    return 0
