"""The study's PTPs as mpt fits them, against the study's claims (the tables of docs/ptp.md).

    .venv/bin/python scripts/ptp_table.py            # markdown on stdout
    .venv/bin/python scripts/ptp_table.py --figures docs/figures

Each section fits every curve of the study tables it names (``mpt fit``'s
grouping and fitter) and says whether the fitted s0 lies in the study's range.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from tabulate import tabulate

from mpt_core.commands.fit import PtpRow, fit_curve, interval, show_x, verdict
from mpt_core.curves import group_curves, read_points
from mpt_core.plots import write_figures

STUDY = Path(__file__).resolve().parent.parent / "baselines" / "study"


@dataclass(frozen=True)
class Claim:
    title: str
    tables: tuple[str, ...]
    axis: str
    low: float  # the study's range, in compression x
    high: float
    words: str


CLAIMS = [
    Claim("Structured pruning", ("table1",), "ratio", 0.30, 0.45, "30-45% sparsity"),
    Claim("Unstructured pruning", ("table2", "table3"), "ratio", 0.55, 0.65, "55-65% sparsity"),
    Claim(
        "Low-rank decomposition", ("table7",), "ratio", 0.17, 0.30, "17-30% (ASVD 17%, SVD-LLM 30%)"
    ),
    Claim(
        "Quantization (GGUF, by model)",
        ("table5", "table6"),
        "bits",
        1 - 4 / 16,
        1 - 3 / 16,
        "fails below 3 bits: s0 between 3 and 4 bits",
    ),
    Claim(
        "Quantization (methods, Table 4)",
        ("table4",),
        "bits",
        1 - 4 / 16,
        1 - 3 / 16,
        "fails below 3 bits",
    ),
]


def rows_for(claim: Claim) -> list[PtpRow]:
    rows = []
    for table in claim.tables:
        points = [p for p in read_points(STUDY / f"{table}.csv") if p.metric == "ppl"]
        curves = [c for c in group_curves(points, axes=(claim.axis,)) if c.key.others == "dense"]
        rows += [fit_curve(curve, "up") for curve in curves]
    return rows


def agreement(row: PtpRow, claim: Claim) -> str:
    fit = row.fit
    if fit is None:
        return "-"
    if not fit.has_transition:
        return "no transition"
    if claim.low <= fit.s0 <= claim.high:
        return "inside"
    overlaps = fit.s0_low <= claim.high and fit.s0_high >= claim.low
    side = "above" if fit.s0 > claim.high else "below"
    return f"{side}{' (interval overlaps)' if overlaps else ''}"


def section(claim: Claim) -> str:
    rows = rows_for(claim)
    table = []
    for row in rows:
        key, fit = row.curve.key, row.fit
        where = f"{key.model} " if claim.axis == "bits" else ""
        label = f"{where}{key.label}" + (f" ({key.dataset})" if key.dataset != "wikitext2" else "")
        if fit is None:
            table.append([label, row.curve.x.size, "-", "-", row.note, "-"])
            continue
        table.append(
            [
                label,
                row.curve.x.size,
                show_x(fit.s0, key.axis),
                interval(fit, key.axis),
                verdict(fit),
                agreement(row, claim),
            ]
        )
    head = ["curve", "n", "s0", "95% interval", "transition", f"vs study ({claim.words})"]
    tables = ", ".join(claim.tables)
    return f"### {claim.title} ({tables})\n\n" + tabulate(table, head, tablefmt="github") + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--figures", default=None, help="also write the figures to this folder")
    args = parser.parse_args()
    print("\n".join(section(claim) for claim in CLAIMS))
    if args.figures:
        names = ["table1", "table2", "table3", "table5", "table6", "table7", "table8", "table10"]
        for path in write_figures([STUDY / f"{n}.csv" for n in names], args.figures):
            print(f"<!-- wrote {path} -->")


if __name__ == "__main__":
    main()
