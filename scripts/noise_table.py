"""The CPU tier's noise floors: per grid, how many points were perturbed and their spread,
and every chaotic point (spread above ``verdict.CHAOTIC``) by name.

Usage: ``python scripts/noise_table.py baselines/cpu/*/*.noise.txt``
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from tabulate import tabulate

from mpt_core.verdict import CHAOTIC, NOISE_MULTIPLE


def read(path: Path) -> list[dict]:
    body = [line for line in path.read_text(encoding="utf-8").splitlines() if line[:1] != "#"]
    return list(csv.DictReader(body))


def main(paths: list[str]) -> int:
    grids, chaotic = [], []
    for path in map(Path, paths):
        rows = read(path)
        spreads = sorted(float(row["spread"]) for row in rows)
        if not spreads:
            continue
        name = f"{path.parent.name}/{path.name.removesuffix('.noise.txt')}"
        grids.append(
            [name, len(spreads), f"{spreads[len(spreads) // 2]:.2g}", f"{spreads[-1]:.2g}"]
        )
        chaotic += [
            [name, row["spec"], row["dataset"], f"{float(row['spread']):.3g}"]
            for row in rows
            if float(row["spread"]) > CHAOTIC
        ]
    print(
        tabulate(grids, headers=["grid", "points", "median spread", "largest"], tablefmt="github")
    )
    print(
        f"\nA point's tolerance is never below {NOISE_MULTIPLE:g}x its spread. Chaotic points "
        f"(spread above {CHAOTIC:.0%}): "
        + (
            "none."
            if not chaotic
            else "\n\n"
            + tabulate(chaotic, headers=["grid", "spec", "dataset", "spread"], tablefmt="github")
        )  # fmt: skip
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
