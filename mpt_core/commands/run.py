"""``mpt run``: compress a model by one spec and measure it."""

from __future__ import annotations

import argparse

from mpt_core.commands.common import add_model_arguments, describe, open_session
from mpt_core.registry import validate
from mpt_core.results import append
from mpt_core.spec import Spec


def register(subparsers) -> None:
    parser = subparsers.add_parser("run", help="measure one compression spec")
    add_model_arguments(parser)
    parser.add_argument(
        "--spec", required=True, help="e.g. dense, magnitude:0.5, 'rtn:4[group=64]'"
    )
    parser.add_argument("--json", action="store_true", help="print the record as one JSON line")
    parser.add_argument("--out", default=None, help="also append the record to this JSONL file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    spec = Spec.parse(args.spec)
    validate(spec)
    session = open_session(args)
    record = session.measure(spec, args.dataset, args.windows)
    if args.out:
        append(args.out, record)
    print(record.to_json() if args.json else describe(record))
    return 0
