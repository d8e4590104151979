"""``mpt fit``: the phase-transition point of every curve in result or baseline files.

Baseline CSVs and results JSONL are grouped into curves by ``mpt_core.analysis.curves``
(one row per method and fixed other stages); any other CSV needs ``--x`` and
``--y`` columns and is grouped by ``--by COLUMN`` if given.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from tabulate import tabulate

from mpt_core.analysis.curves import (
    AXES,
    MeasuredCurve,
    group_curves,
    is_baseline_csv,
    read_points,
    read_xy_curves,
)
from mpt_core.analysis.fit import PhaseFit, fit_phase_transition
from mpt_core.commands.common import finite_float
from mpt_core.errors import BaselineError, FitError, MptError

PLOT_SUFFIXES = (".png", ".svg", ".pdf")  # matplotlib writes each by the file's suffix
DIRECTIONS = {"ppl": "up", "acc": "down", "acc_norm": "down"}
# what a collapsed model still scores: chance on the four choices of ARC and MMLU
FLOORS = {"acc": 0.25, "acc_norm": 0.25}


@dataclass(frozen=True)
class PtpRow:
    """One curve's phase-transition point, or why it has none."""

    curve: MeasuredCurve
    fit: PhaseFit | None
    note: str = ""

    def cells(self) -> list[str]:
        key, fit = self.curve.key, self.fit
        head = [key.model, key.dataset, key.label, key.axis, str(self.curve.x.size)]
        if fit is None:
            return [*head, "-", "-", self.note]
        s0 = show_x(fit.s0, key.axis)
        # without a transition the profile minimum is only where a kink would fit best
        return [
            *head,
            s0 if fit.has_transition else f"({s0})",
            interval(fit, key.axis),
            verdict(fit),
        ]


HEADERS = ["model", "dataset", "curve", "axis", "n", "s0", "95% interval", "has_transition"]


def show_x(x: float, axis: str) -> str:
    """Ratios as percent; quantization as bits per weight (and the compression in brackets)."""
    if axis == "bits":
        return f"{16 * (1 - x):.2f} bits"
    return f"{100 * x:.1f}%"


def interval(fit: PhaseFit, axis: str) -> str:
    low, high = fit.s0_low, fit.s0_high
    if axis == "bits":
        return f"[{16 * (1 - high):.2f}, {16 * (1 - low):.2f}] bits"
    return f"[{100 * low:.1f}, {100 * high:.1f}]%"


def verdict(fit: PhaseFit) -> str:
    gap = fit.bic_power - fit.bic_piecewise
    return f"{'yes' if fit.has_transition else 'no'} (dBIC {gap:+.1f})"


def fit_curve(curve: MeasuredCurve, direction: str, floor: float = 0.0) -> PtpRow:
    """Fit one curve; a curve the model cannot take becomes a row that says why."""
    try:
        fit = fit_phase_transition(curve.x, curve.y, direction=direction, floor=floor)
    except FitError as error:
        return PtpRow(curve, None, str(error).split(":")[0])
    return PtpRow(curve, fit)


def load_curves(args: argparse.Namespace, path: Path) -> list[MeasuredCurve]:
    if not path.is_file():
        raise BaselineError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise BaselineError(f"{path}: empty file")
    if is_baseline_csv(path):
        if args.by not in (None, "method"):
            raise MptError(f"--by {args.by}: baseline files group by 'method' only")
        points = [p for p in read_points(path) if p.metric == args.metric]
        return group_curves(points, axes=AXES if args.axis == "all" else (args.axis,))
    if args.x is None or args.y is None:
        raise BaselineError(f"{path}: not a baseline CSV; name its columns with --x and --y")
    return read_xy_curves(path, args.x, args.y, args.by, "bits" if args.axis == "bits" else "ratio")


def ptp_rows(args: argparse.Namespace) -> list[PtpRow]:
    direction = args.direction or DIRECTIONS.get(args.metric, "up")
    floor = FLOORS.get(args.metric, 0.0) if args.floor is None else args.floor
    rows = []
    for path in args.files:
        curves = load_curves(args, Path(path))
        if not curves:
            raise FitError(f"{path}: no curve for metric {args.metric!r} on the {args.axis} axis")
        rows.extend(fit_curve(curve, direction, floor) for curve in curves)
    if all(row.fit is None for row in rows):
        raise FitError(f"no curve could be fitted; {rows[0].curve.key.label}: {rows[0].note}")
    return rows


def register(subparsers) -> None:
    parser = subparsers.add_parser("fit", help="phase-transition point of each curve")
    parser.add_argument(
        "files", nargs="+", help="baseline CSV, results JSONL, or a CSV with --x/--y"
    )
    parser.add_argument("--by", default=None, help="group by: 'method' (baseline) or a column")
    parser.add_argument("--metric", default="ppl", help="metric to fit (default ppl)")
    parser.add_argument("--axis", default="all", choices=[*AXES, "all"])
    parser.add_argument("--x", default=None, help="x column of a plain CSV")
    parser.add_argument("--y", default=None, help="y column of a plain CSV")
    parser.add_argument("--direction", default=None, choices=["up", "down"])
    parser.add_argument(
        "--floor",
        type=finite_float,
        default=None,
        help="what a collapsed model still scores, fitted above (default: 0.25 for acc, "
        "acc_norm: chance on four choices; 0 otherwise)",
    )
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    parser.add_argument(
        "--plot",
        default=None,
        metavar="FILE",
        help="also draw every fitted curve into FILE (.png, .svg or .pdf), one panel each: "
        "points, fit, s0 with its 95%% interval",
    )
    parser.add_argument(
        "--band",
        default=None,
        metavar="LOW:HIGH",
        help="with --plot: the study's range of s0 to draw, in compression x (e.g. 0.55:0.65)",
    )
    parser.set_defaults(func=run)


def check_plot(args: argparse.Namespace) -> tuple[float, float] | None:
    """Refuse a ``--plot`` file or ``--band`` that cannot be drawn, before any fit; the
    band as numbers."""
    if args.plot is None:
        if args.band is not None:
            raise MptError("--band is drawn on the --plot figure: add --plot FILE.png")
        return None
    path = Path(args.plot)
    if path.suffix.lower() not in PLOT_SUFFIXES:
        raise MptError(f"--plot {args.plot}: name a {', '.join(PLOT_SUFFIXES)} file")
    if not path.parent.is_dir():
        raise MptError(f"--plot {args.plot}: folder {path.parent} does not exist: create it first")
    return None if args.band is None else parse_band(args.band)


def parse_band(text: str) -> tuple[float, float]:
    try:
        low, high = (float(part) for part in text.split(":"))
    except ValueError:
        raise MptError(f"--band {text}: write LOW:HIGH in compression x, e.g. 0.55:0.65") from None
    if not 0 <= low < high <= 1:
        raise MptError(f"--band {text}: need 0 <= LOW < HIGH <= 1 (compression x)")
    return low, high


def draw(rows: list[PtpRow], path: str, band: tuple[float, float] | None) -> None:
    from mpt_core.reporting.plots import plot_fits, save_figure  # matplotlib: only when drawn

    save_figure(plot_fits([(row.curve, row.fit) for row in rows if row.fit], band), Path(path))


def run(args: argparse.Namespace) -> int:
    band = check_plot(args)
    rows = ptp_rows(args)
    table = [row.cells() for row in rows]
    print(tabulate(table, HEADERS, tablefmt="github" if args.markdown else "simple"))
    if args.plot:
        draw(rows, args.plot, band)
    return 0
