"""``mpt sweep``: measure one method over a grid of levels, resumably.

Each point is appended to ``--out`` as soon as it is measured; a second run
skips the points already there, so an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import argparse
import math

from mpt_core import progress
from mpt_core.commands.common import add_model_arguments, check_out, describe, open_session
from mpt_core.errors import MptError
from mpt_core.pipeline import Plan, plan
from mpt_core.records import append, known_keys, read
from mpt_core.registry import validate
from mpt_core.spec import Spec


def register(subparsers) -> None:
    parser = subparsers.add_parser("sweep", help="measure a method over many levels, resumably")
    add_model_arguments(parser)
    parser.add_argument("--method", required=True, help="e.g. magnitude, rtn")
    levels = parser.add_argument_group("levels (at least one)")
    levels.add_argument("--ratios", default=None, help="start:stop:step (inclusive) or a,b,c")
    levels.add_argument("--nm", default=None, help="N:M patterns, e.g. 2:4,4:8")
    levels.add_argument("--bits", default=None, help="bit widths, e.g. 8,6,4,3,2")
    levels.add_argument("--schemes", default=None, help="schemes, e.g. Q4_K_M,Q8_0")
    parser.add_argument("--options", default="", help="options for every point, e.g. group=64")
    parser.add_argument("--dense", action="store_true", help="also measure the dense model")
    parser.add_argument(
        "--adaptive",
        action="store_true",
        help="choose each next ratio where it narrows the PTP interval most "
        "(within the --ratios start:stop range)",
    )
    parser.add_argument("--budget", type=int, default=10, help="points of an --adaptive sweep")
    parser.add_argument("--out", required=True, help="JSONL file the records are appended to")
    parser.set_defaults(func=run)


# A sweep past this many points is a typo (0.0000001 for 0.01), not a plan: at the CPU
# tier's seconds a point it would run for days, and it hung building its grid (issue #23).
MAX_POINTS = 1000


def parse_ratios(text: str) -> list[float]:
    """``0.1:0.8:0.1`` (inclusive) or ``0.1,0.5,0.7``; at most ``MAX_POINTS`` of them."""
    try:
        if ":" in text:
            start, stop, step = (float(part) for part in text.split(":"))
            if not (0 < step < math.inf and math.isfinite(start) and start <= stop < math.inf):
                raise ValueError
            count = int(round((stop - start) / step)) + 1
            _check_count(text, count)
            return [round(start + i * step, 10) for i in range(count)]
        ratios = [float(part) for part in text.split(",")]
    except ValueError:
        raise MptError(
            f"--ratios {text!r} is not start:stop:step with 0 < step, start <= stop, "
            "nor a comma list such as 0.1,0.5"
        ) from None
    _check_count(text, len(ratios))
    return ratios


def _check_count(text: str, count: int) -> None:
    if count > MAX_POINTS:
        raise MptError(
            f"--ratios {text!r} asks for {count:,} points, more than the limit of "
            f"{MAX_POINTS:,}: use a larger step"
        )


def sweep_specs(args: argparse.Namespace) -> list[Plan]:
    levels: list[str] = []
    if args.ratios:
        levels += [repr(ratio) for ratio in parse_ratios(args.ratios)]
    for flag in (args.nm, args.bits, args.schemes):
        if flag:
            levels += [part.strip() for part in flag.split(",") if part.strip()]
    if not levels:
        raise MptError("mpt sweep needs levels: give --ratios, --nm, --bits or --schemes")
    suffix = f"[{args.options}]" if args.options else ""
    specs = ([Spec()] if args.dense else []) + [
        Spec.parse(f"{args.method}:{level}{suffix}") for level in levels
    ]
    return [plan(spec) for spec in specs]  # validated and resolved once, before the model loads


def run(args: argparse.Namespace) -> int:
    check_out(args.out)
    if args.adaptive:
        return run_adaptive(args)
    specs = sweep_specs(args)
    for spec in specs:
        spec.check_model(args.model)
    done = known_keys(args.out)
    session = open_session(args)
    todo = [
        spec
        for spec in specs
        if session.point_key(str(spec.spec), args.dataset, args.windows) not in done
    ]
    if len(todo) < len(specs):
        print(f"resuming: {len(specs) - len(todo)} of {len(specs)} points already in {args.out}")
    for spec in progress.each(todo, f"sweep {args.method}"):
        record = session.measure(spec, args.dataset, args.windows)
        append(args.out, record)
        progress.write(describe(record))
    return 0


def run_adaptive(args: argparse.Namespace) -> int:
    """Measure ``--budget`` ratios, each proposed by ``adaptive.propose_next`` from the
    points measured so far (those already in ``--out`` count: the sweep resumes)."""
    from mpt_core.analysis.adaptive import propose_next

    lo, hi = _adaptive_range(args.ratios or "", args.budget)
    suffix = f"[{args.options}]" if args.options else ""
    first = Spec.parse(f"{args.method}:{lo!r}{suffix}")
    validate(first)
    plan(first).check_model(args.model)
    session = open_session(args)
    points = _measured_ratios(args, session, suffix)
    for _ in progress.each(range(max(0, args.budget - len(points))), "adaptive sweep"):
        level = round(propose_next(points, lo, hi), 4)
        record = session.measure(
            Spec.parse(f"{args.method}:{level!r}{suffix}"), args.dataset, args.windows
        )
        append(args.out, record)
        points.append((level, record.value))
        progress.write(describe(record))
    return 0


def _adaptive_range(text: str, budget: int) -> tuple[float, float]:
    try:
        lo, hi = (float(part) for part in text.split(":")[:2])
    except ValueError:
        lo = hi = math.nan
    if not (0 <= lo < hi < 1) or budget < 1:
        raise MptError(
            f"--adaptive needs --ratios lo:hi with 0 <= lo < hi < 1 (got {text!r}) "
            f"and a positive --budget (got {budget})"
        )
    return lo, hi


def _measured_ratios(args, session, suffix: str) -> list[tuple[float, float]]:
    """(ratio, value) of this method, with these options, already in ``--out`` and measured
    as this sweep measures (the point's whole key: model, weights, protocol, dtype, device)."""
    options = Spec.parse(f"{args.method}:0.5{suffix}").stages[0].options
    points = []
    for record in read(args.out):
        stages = Spec.parse(record.spec).stages
        single = len(stages) == 1 and stages[0].ratio is not None
        if (
            single
            and (stages[0].method, stages[0].options) == (args.method, options)
            and record.key == session.point_key(record.spec, args.dataset, args.windows)
        ):
            points.append((stages[0].ratio, record.value))
    return points
