"""``mpt combined``: the study's combined-compression claim tested on a measured grid.

Reads a baseline CSV or results JSONL holding a pruning (or rank) x quantization
grid and prints, as markdown: the smallest configurations within 5% and 10% of
the uncompressed model, and the additivity of every pipeline (its increase
against the sum of its stages' increases). ``--figure STEM`` also draws the
3-D surface and the contour with the Pareto front and phase-transition lines.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mpt_core.analysis.additivity import Interaction, interactions, median_ratio
from mpt_core.analysis.combine import Grid, build_grid, recommend, safety, select_setting
from mpt_core.analysis.curves import read_points
from mpt_core.errors import FitError

BUDGETS = (0.05, 0.10)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "combined", help="smallest configurations and additivity of a compression grid"
    )
    parser.add_argument("file", help="baseline CSV or results JSONL with a two-stage grid")
    parser.add_argument("--model", default=None)
    parser.add_argument("--dataset", default=None)
    parser.add_argument("--figure", default=None, help="write STEM.png/.svg: surface + contour")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    points = [p for p in read_points(args.file) if p.metric == "ppl"]
    if not points:
        raise FitError(f"{args.file}: no perplexity points")
    grid = build_grid(select_setting(points, args.model, args.dataset))
    print("\n".join(smallest_lines(grid) + [""] + additivity_lines(interactions(grid))))
    if args.figure:
        from mpt_core.reporting.plots import plot_combined, save

        save(plot_combined(grid, Path(args.file).stem), Path(args.figure))
    return 0


def smallest_lines(grid: Grid) -> list[str]:
    lines = ["| budget | smallest configuration | size (% FP16) | PPL | below both PTPs |"]
    lines.append("|---|---|---|---|---|")
    for budget in BUDGETS:
        try:
            rec = recommend(grid, budget)
        except FitError:
            lines.append(f"| +{100 * budget:g}% | none within budget | | | |")
            continue
        cell = rec.cell
        lines.append(
            f"| +{100 * budget:g}% | `{cell.spec}` | {100 * cell.size:.1f} | "
            f"{cell.value:.4g} ({100 * rec.increase:+.1f}%) | {safety(grid, cell)} |"
        )
    return lines


def additivity_lines(found: list[Interaction]) -> list[str]:
    if not found:
        return ["no pipeline has both of its single stages measured: additivity not tested"]
    lines = ["| pipeline | PPL increase | sum of stage increases | ratio | below both PTPs |"]
    lines.append("|---|---|---|---|---|")
    for item in found:
        lines.append(
            f"| `{item.spec}` | {item.measured:.4g} | {item.summed:.4g} | {item.ratio:.2f} | "
            f"{item.safety} |"
        )
    safe = [item for item in found if item.safe]
    unfitted = sum(item.safety == "unfitted" for item in found)
    lines += [
        "",
        f"median ratio: {median_ratio(found):.2f} over {len(found)} pipelines; "
        + (
            f"{median_ratio(safe):.2f} over the {len(safe)} below both PTPs"
            if safe
            else "none below both fitted PTPs"
        )
        + (f"; {unfitted} where a PTP line is too short to fit (unfitted)" if unfitted else ""),
    ]
    return lines
