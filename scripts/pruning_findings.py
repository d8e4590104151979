"""The study's unstructured-pruning findings checked on baseline files (mpt_core.study.findings).

Usage: python scripts/pruning_findings.py FILE.csv ... [--dataset wikitext2] [--tier cpu|study]
Prints three markdown tables: the ranking at 50-70%, unstructured vs 4:8 vs 2:4, and OWL
at 70%; each row's verdict is yes, no (with the numbers that break it) or not recorded.
"""

from __future__ import annotations

import argparse
import sys

from tabulate import tabulate

from mpt_core.baselines import load_file
from mpt_core.study.findings import (
    PATTERN_LEVELS,
    RANKING_METHODS,
    Finding,
    owl,
    pattern,
    ppl_points,
    ranking,
)


def render(title: str, first: str, columns: tuple[str, ...], findings: list[Finding]) -> str:
    body = [
        [finding.label, *(_cell(value) for value in finding.values), finding.verdict]
        for finding in findings
    ]
    table = tabulate(body, [first, *columns, "holds"], tablefmt="github")
    return f"**{title}**\n\n{table}"


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+")
    parser.add_argument("--dataset", default="wikitext2")
    parser.add_argument("--tier", default="cpu", choices=("cpu", "study"))
    args = parser.parse_args(argv)
    rows = [row for path in args.files for row in load_file(path, args.tier)]
    points = ppl_points(rows, args.dataset)
    sections = [
        render(
            "SparseGPT, ADMM < Wanda < magnitude (PPL)",
            "sparsity",
            RANKING_METHODS,
            ranking(points),
        ),
        render("unstructured 50% < 4:8 < 2:4 (PPL)", "method", PATTERN_LEVELS, pattern(points)),
        render("OWL beats its base at 70% (PPL)", "base", ("base alone", "with OWL"), owl(points)),
    ]
    print("\n\n".join(sections))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
