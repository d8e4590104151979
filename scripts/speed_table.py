"""The README's speed table from a pytest-benchmark JSON of benchmarks/test_speed_throughput.py.

Usage: python scripts/speed_table.py BENCHMARK.json [MODEL]
One row per spec: prefill and decode tokens/s of the fastest timed round (on a shared
machine the least disturbed one), each also as a ratio to dense measured in the same run,
the footprint, and the kernel that ran.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

from tabulate import tabulate

HEADERS = ["spec", "prefill tok/s", "vs dense", "decode tok/s", "vs dense", "size", "kernel"]


def speeds(benchmarks: list[dict], model: str) -> dict[str, dict]:
    """spec -> {"prefill": tok/s, "decode": tok/s, "info": extra_info}, in run order."""
    table: dict[str, dict] = defaultdict(dict)
    for bench in benchmarks:
        info = bench["extra_info"]
        if info.get("model") == model:
            table[info["spec"]][info["phase"]] = info["tokens"] / bench["stats"]["min"]
            table[info["spec"]]["info"] = info
    return table


def rows(table: dict[str, dict]) -> list[list[str]]:
    dense = table.get("dense", {})
    out = []
    for spec, row in table.items():
        cells = [f"`{spec}`"]
        for phase in ("prefill", "decode"):
            value = row.get(phase)
            cells.append(f"{value:.3g}" if value else "-")
            cells.append(f"{value / dense[phase]:.2f}x" if value and dense.get(phase) else "-")
        cells += [f"{100 * row['info']['relative_size']:.0f}% of fp16", row["info"]["kernel"]]
        out.append(cells)
    return out


def main(argv: list[str]) -> int:
    data = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    model = argv[1] if len(argv) > 1 else "smollm2-135m"
    print(tabulate(rows(speeds(data["benchmarks"], model)), HEADERS, tablefmt="github"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
