"""A table of recorded points (PPL on each dataset, real size), as the study's Tables 5/6.

Usage: python scripts/points_table.py RECORDS.jsonl ...
    [--specs SPEC,... | --method M [--levels DATASET]]
Columns are the single-stage points (and dense), largest first; rows give PPL ± stderr on
each dataset recorded, the size llama.cpp's file or mpt's footprint counts (MB and % of
FP16) and the bits per weight of the compressed linears. ``--specs`` keeps those columns,
in that order (e.g. the study's ladder Q2_K, Q3_K_M, ... Q8_0); ``--method`` (repeatable)
gives a table per method: dense and the method's points (options included, e.g.
``dsnot[init=wanda]``), by level. ``--levels DATASET`` with ``--method`` gives instead the
layout of the study's Tables 1, 2 and 7: one row per method, one column per level, PPL on
that dataset, ``-`` where a point is not recorded.
"""

from __future__ import annotations

import argparse
import sys

from tabulate import tabulate

from mpt_core.analysis.curves import without_level
from mpt_core.records import Record, read
from mpt_core.spec import Spec, Stage

DATASETS = {"wikitext2": "WikiText-2", "ptb": "PTB", "c4": "C4"}


def latest(paths: list[str]) -> dict[tuple[str, str], Record]:
    """(spec, dataset) -> the last perplexity record written for it."""
    found = {}
    for path in paths:
        for record in read(path):
            if record.metric == "ppl" and len(Spec.parse(record.spec).stages) < 2:
                found[(record.spec, record.dataset)] = record
    return found


def method_stages(found: dict[tuple[str, str], Record], method: str) -> list[Stage]:
    """The method's recorded points (options included), in Stage.level_order."""
    single = [Spec.parse(spec).stages for spec in {spec for spec, _ in found} if spec != "dense"]
    stages = [stage for (stage,) in single if without_level(stage) == method]
    return sorted(stages, key=lambda stage: (stage.level_order, str(stage)))


def method_columns(found: dict[tuple[str, str], Record], method: str) -> list[str]:
    """dense, then the method's points in level order."""
    return ["dense", *(str(stage) for stage in method_stages(found, method))]


def level_table(found: dict[tuple[str, str], Record], methods: list[str], dataset: str) -> str:
    """Methods as rows, their levels as columns (in Stage.level_order), PPL on ``dataset``."""
    cells: dict[str, dict[str, str]] = {}
    order: dict[str, tuple] = {}
    for method in methods:
        cells[method] = {}
        for stage in method_stages(found, method):
            order[stage.level_str()] = stage.level_order
            if (record := found.get((str(stage), dataset))) is not None:
                cells[method][stage.level_str()] = f"{record.value:.4g}"
    levels = sorted(order, key=order.get)
    body = [[f"`{m}`", *(cells[m].get(level, "-") for level in levels)] for m in methods]
    dense = found.get(("dense", dataset))
    caption = f"PPL ({DATASETS.get(dataset, dataset)}; dense {_ppl(dense)}):\n\n"
    return caption + tabulate(body, ["method", *levels], tablefmt="github", disable_numparse=True)


def method_table(found: dict[tuple[str, str], Record], method: str) -> str:
    """The method's table under its name, or a line saying it has no point recorded."""
    columns = method_columns(found, method)
    if len(columns) == 1:
        return f"`{method}`: no point recorded yet"
    return f"`{method}`:\n\n{table(found, columns)}"


def table(found: dict[tuple[str, str], Record], specs: list[str] | None) -> str:
    sizes = {spec: record.footprint for (spec, _), record in found.items()}
    columns = specs or sorted(sizes, key=lambda spec: -sizes[spec]["bytes"])
    datasets = [name for name in DATASETS if any(key[1] == name for key in found)]
    body = [
        [f"PPL ({DATASETS[name]})", *(_ppl(found.get((spec, name))) for spec in columns)]
        for name in datasets
    ]
    body.append(["size (MB)", *(_size(sizes.get(spec), "bytes", 1e-6, ".1f") for spec in columns)])
    body.append(
        ["% of fp16", *(_size(sizes.get(spec), "relative_size", 100, ".1f") for spec in columns)]
    )
    body.append(
        [
            "bits / weight",
            *(_size(sizes.get(spec), "bits_per_weight", 1, ".2f") for spec in columns),
        ]
    )
    return tabulate(body, ["", *(f"`{spec}`" for spec in columns)], tablefmt="github")


def _ppl(record: Record | None) -> str:
    return "-" if record is None else f"{record.value:.4g} ± {record.stderr:.2g}"


def _size(footprint: dict | None, key: str, scale: float, fmt: str) -> str:
    return "-" if footprint is None else format(footprint[key] * scale, fmt)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records", nargs="+")
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--specs", help="comma list of the columns, in order")
    choice.add_argument(
        "--method", action="append", help="dense and this method's points (repeatable)"
    )
    parser.add_argument("--levels", metavar="DATASET", help="with --method: methods x levels")
    args = parser.parse_args(argv)
    if args.levels and not args.method:
        parser.error("--levels needs the methods of its rows: add --method M (repeatable)")
    found = latest(args.records)
    if args.levels:
        print(level_table(found, args.method, args.levels))
        return 0
    if args.method:
        print("\n\n".join(method_table(found, name) for name in args.method))
        return 0
    print(table(found, args.specs.split(",") if args.specs else None))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
