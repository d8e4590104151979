"""Print the study tier's protocols as a markdown table: one line per (table, distinct
protocol), with how many of the table's rows use it (docs/study-tier.md embeds the output).

    python scripts/protocol_table.py
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from mpt_core import baselines
from mpt_core.protocols import protocol_for

STUDY = Path(__file__).resolve().parent.parent / "baselines" / "study"


def describe(protocol) -> tuple[str, ...]:
    evaluation = protocol.evaluation + (f" ctx {protocol.ctx}" if protocol.ctx else "")
    calibration = (
        "none"
        if protocol.calib_set == "none"
        else f"{protocol.calib_set} {protocol.calib_split} "
        f"{protocol.calib_nsamples or 'method'}×{protocol.calib_length}"
    )
    return evaluation, str(protocol.seqlen), protocol.dtype, calibration


def main() -> None:
    rows = [row for row in baselines.load_dir(STUDY, "study") if row.is_numeric]
    counts = Counter((row.table, describe(protocol_for(row))) for row in rows)
    print("| table | evaluation | seqlen | dtype | calibration | rows |")
    print("|---|---|---|---|---|---|")
    for (table, fields), count in sorted(counts.items(), key=lambda kv: (int(kv[0][0][5:]), kv[0])):
        print(f"| {table} | {' | '.join(fields)} | {count} |")


if __name__ == "__main__":
    main()
