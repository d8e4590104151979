"""The study's PTPs as mpt fits them, against the study's claims (the tables of docs/ptp.md).

    .venv/bin/python scripts/ptp_table.py            # markdown on stdout
    .venv/bin/python scripts/ptp_table.py --figures docs/figures
    .venv/bin/python scripts/ptp_table.py --cpu baselines/cpu/smollm2-135m   # the CPU tier

Each section fits every curve of the study tables it names (``mpt fit``'s
grouping and fitter) and says whether the fitted s0 lies in the study's range.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from tabulate import tabulate

from mpt_core.analysis.curves import group_curves, merge_repeats, read_points
from mpt_core.commands.fit import PtpRow, fit_curve, interval, show_x, verdict
from mpt_core.reporting.plots import write_figures

STUDY = Path(__file__).resolve().parent.parent / "baselines" / "study"


@dataclass(frozen=True)
class Claim:
    title: str
    tables: tuple[str, ...]
    axis: str
    low: float  # the study's range, in compression x
    high: float
    words: str
    cpu_files: tuple[str, ...]  # globs of the CPU-tier baseline files the claim applies to
    # The CPU curve keeps the study's ladder of schemes only: one per nominal bit width (the
    # grid's _S/_L and i-quant variants share a width and would put two y on one x).
    cpu_schemes: frozenset[str] | None = None


CLAIMS = [
    Claim(
        "Structured pruning", ("table1",), "ratio", 0.30, 0.45, "30-45% sparsity", ("structured*",)
    ),
    Claim(
        "Unstructured pruning",
        ("table2", "table3"),
        "ratio",
        0.55,
        0.65,
        "55-65% sparsity",
        ("unstructured*", "combined-wanda-gguf", "combined-sparsegpt-gptq"),
    ),
    Claim(
        "Low-rank decomposition",
        ("table7",),
        "ratio",
        0.17,
        0.30,
        "17-30% (ASVD 17%, SVD-LLM 30%)",
        ("lowrank*", "combined-asvd-rtn"),
    ),
    Claim(
        "Quantization (GGUF, by model)",
        ("table5", "table6"),
        "bits",
        1 - 4 / 16,
        1 - 3 / 16,
        "fails below 3 bits: s0 between 3 and 4 bits",
        ("quant-gguf", "combined-wanda-gguf"),
        frozenset({"Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0"}),
    ),
    Claim(
        "Quantization (methods, Table 4)",
        ("table4",),
        "bits",
        1 - 4 / 16,
        1 - 3 / 16,
        "fails below 3 bits",
        ("quant", "quant-gptq*", "combined-sparsegpt-gptq", "combined-asvd-rtn"),
    ),
]


def claim_files(claim: Claim, cpu_dir: Path | None) -> list[Path]:
    """The study's tables of the claim, or the CPU-tier files it applies to."""
    if cpu_dir is None:
        return [STUDY / f"{table}.csv" for table in claim.tables]
    return sorted({path for pattern in claim.cpu_files for path in cpu_dir.glob(f"{pattern}.csv")})


def rows_for(claim: Claim, cpu_dir: Path | None) -> list[PtpRow]:
    """Study tables are fitted one by one (their protocols differ); the CPU tier's files
    share one protocol, so a method's points join across files (a grid recorded for
    combined compression holds single-stage points too); a point two grids both recorded
    counts once, as their mean."""
    files = claim_files(claim, cpu_dir)
    batches = [files] if cpu_dir is not None else [[path] for path in files]
    rows = []
    for batch in batches:
        points = [
            p
            for path in batch
            for p in read_points(path)
            if p.metric == "ppl" and on_ladder(p, claim, cpu_dir)
        ]
        points = merge_repeats(points) if cpu_dir is not None else points
        curves = [c for c in group_curves(points, axes=(claim.axis,)) if c.key.others == "dense"]
        rows += [fit_curve(curve, "up") for curve in curves]
    return rows


def on_ladder(point, claim: Claim, cpu_dir: Path | None) -> bool:
    if cpu_dir is None or claim.cpu_schemes is None:
        return True
    schemes = [stage.scheme for stage in point.spec.stages if stage.scheme is not None]
    return all(scheme in claim.cpu_schemes for scheme in schemes)


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


def section(claim: Claim, cpu_dir: Path | None) -> str:
    rows = rows_for(claim, cpu_dir)
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
    files = ", ".join(path.stem for path in claim_files(claim, cpu_dir)) or "no file yet"
    return f"### {claim.title} ({files})\n\n" + tabulate(table, head, tablefmt="github") + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--figures", default=None, help="also write the figures to this folder")
    parser.add_argument("--cpu", default=None, help="fit this CPU-tier baselines folder instead")
    args = parser.parse_args()
    cpu_dir = Path(args.cpu) if args.cpu else None
    print("\n".join(section(claim, cpu_dir) for claim in CLAIMS))
    if args.figures:
        names = ["table1", "table2", "table3", "table5", "table6", "table7", "table8", "table10"]
        # the PTP figures draw ratio curves: each table's claimed range of s0 beside them
        bands = {
            table: (claim.low, claim.high)
            for claim in CLAIMS
            if claim.axis == "ratio"
            for table in claim.tables
        }
        files = [STUDY / f"{n}.csv" for n in names]
        for path in write_figures(files, args.figures, bands):
            print(f"<!-- wrote {path} -->")


if __name__ == "__main__":
    main()
