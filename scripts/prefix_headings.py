"""Prefix every markdown heading read from stdin with a label, so that headings stay unique.

``mpt report FILE`` titles each table ``### <model> · <dataset> · <metric> · <family>``; two
records files of one family give the same titles. Piping each through this script names the
grid in every title::

    .venv/bin/mpt report baselines/cpu/smollm2-135m/semi.records.jsonl \\
        | .venv/bin/python scripts/prefix_headings.py semi

turns ``### smollm2-135m · ptb · ppl · semi`` into ``### semi · smollm2-135m · ptb · ppl · semi``.
Everything else passes through unchanged; headings inside fenced code are left alone.
"""

from __future__ import annotations

import argparse
import re
import sys

HEADING = re.compile(r"^(?P<hashes>#{1,6})\s+(?P<title>.*)$")
FENCE = re.compile(r"^\s*(```|~~~)")


def prefix(text: str, label: str) -> str:
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        match = None if fenced else HEADING.match(line)
        if match:
            line = f"{match.group('hashes')} {label} · {match.group('title')}"
        lines.append(line)
    return "\n".join(lines) + ("\n" if text.endswith("\n") else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("label", help="text put before every heading's title")
    args = parser.parse_args(argv)
    sys.stdout.write(prefix(sys.stdin.read(), args.label))
    return 0


if __name__ == "__main__":
    sys.exit(main())
