"""The ``mpt`` command: methods | run | sweep | baselines | report | history | compare | fit |
recommend | combined, and ``mpt --version``.

Each subcommand lives in ``mpt_core/commands/<name>.py`` and exposes
``register(subparsers)``. Bad input raises an ``MptError``; it is printed as one
line (no traceback) and the exit code is the error's (``mpt_core.errors``): 2 for usage
(an option, argument or spec that does not hold; argparse's own errors too), 3 for data
(a data set, model, baseline or results file that is missing, unreadable or malformed, or
a library that failed on the model). 1: ``mpt compare --fail-on`` found a move; 130:
interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from mpt_core import progress
from mpt_core.errors import USAGE, MptError

COMMANDS = (
    "methods",
    "run",
    "sweep",
    "baselines",
    "report",
    "history",
    "compare",
    "fit",
    "recommend",
    "combined",
)


def version_text() -> str:
    """``mpt 0.1.0 (torch 2.13.0+cpu, transformers ..., ...)``: every library a record names."""
    from mpt_core.records import library_versions

    versions = library_versions()
    own = versions.get("mpt-core", "unknown")
    others = ", ".join(f"{name} {v}" for name, v in sorted(versions.items()) if name != "mpt-core")
    return f"mpt {own} ({others})"


class OneLineParser(argparse.ArgumentParser):
    """argparse's usage errors as one line (its default prints the usage block first)."""

    def error(self, message: str):
        self.exit(USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="mpt", description="Measure what compression does to a causal language model."
    )
    parser.add_argument(
        "--version", action="version", version=version_text(), help="mpt and its libraries"
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"mpt_core.commands.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # the measuring commands take --no-progress (commands/common.py); the others draw none
    drawn = not getattr(args, "no_progress", False) and sys.stderr.isatty()
    if not drawn:  # the hub's and transformers' own bars ("Loading weights") follow ours
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    try:
        with progress.shown(sys.stderr, enabled=drawn):
            return args.func(args)
    except MptError as error:
        print(f"mpt: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("mpt: interrupted; every finished point is recorded", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
