"""A Table-5-style table (PPL, size, ARC-C, ARC-E, MMLU per compression level) from baselines.

Usage: python scripts/downstream_table.py DOWNSTREAM.csv [PPL.csv]
Columns are the downstream file's specs, largest first; accuracies print as value ± stderr;
the PPL row (WikiText-2) comes from the perplexity baseline file when one is given.
"""

from __future__ import annotations

import sys

from tabulate import tabulate

from mpt_core.baselines import BaselineRow, load_file

ROWS = [
    ("PPL (WikiText-2)", "wikitext2", "ppl"),
    ("ARC-C acc", "arc_challenge", "acc"),
    ("ARC-C acc_norm", "arc_challenge", "acc_norm"),
    ("ARC-E acc", "arc_easy", "acc"),
    ("ARC-E acc_norm", "arc_easy", "acc_norm"),
    ("MMLU acc", "mmlu", "acc"),
]


def cell(row: BaselineRow | None) -> str:
    if row is None:
        return "-"
    if row.metric == "ppl":
        return f"{row.value:.4g}"
    return f"{row.value:.3f} ± {row.stderr:.3f}"


def table(rows: list[BaselineRow]) -> str:
    accuracy = [row for row in rows if row.metric != "ppl"]
    specs = sorted({row.spec for row in accuracy}, key=lambda spec: -size_of(accuracy, spec))
    found = {(row.dataset, row.metric, row.spec): row for row in rows}
    body = [
        [label, *(cell(found.get((dataset, metric, spec))) for spec in specs)]
        for label, dataset, metric in ROWS
    ]
    body.append(["size (% of fp16)", *(f"{size_of(accuracy, spec):.1f}" for spec in specs)])
    return tabulate(body, ["", *(f"`{spec}`" for spec in specs)], tablefmt="github")


def size_of(rows: list[BaselineRow], spec: str) -> float:
    return next(row.size for row in rows if row.spec == spec)


def main(argv: list[str]) -> int:
    rows = [row for path in argv for row in load_file(path, "cpu")]
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
