"""Regenerate the generated sections of markdown files from the commands they name.

A section looks like::

    <!-- BEGIN generated: mpt report results.jsonl -->
    ...output of the command...
    <!-- END generated -->

Usage: ``python scripts/update_readme.py README.md [docs/other.md ...]``. Each
command runs from the repository root; its stdout replaces the section body.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECTION = re.compile(
    r"(<!-- BEGIN generated: (?P<command>.+?) -->\n)(?P<body>.*?)(<!-- END generated -->)",
    re.DOTALL,
)


def regenerate(text: str) -> str:
    def replace(match: re.Match) -> str:
        command = match.group("command")
        result = subprocess.run(
            command, shell=True, cwd=ROOT, capture_output=True, text=True, check=True
        )
        return match.group(1) + result.stdout.rstrip() + "\n" + match.group(4)

    return SECTION.sub(replace, text)


def main(paths: list[str]) -> int:
    for path in paths or ["README.md"]:
        target = ROOT / path
        target.write_text(regenerate(target.read_text(encoding="utf-8")), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
