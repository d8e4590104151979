"""Regenerate the generated sections of markdown files from the commands they name.

A section looks like::

    <!-- BEGIN generated: mpt report results.jsonl -->
    ...output of the command...
    <!-- END generated -->

Usage: ``python scripts/update_readme.py [FILE ...]``; without files, README.md and every
``docs/results/*.md``. Each command runs from the repository root under bash with
``pipefail`` (a failing stage of a pipe fails the section); its stdout replaces the
section body.
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


def default_paths() -> list[str]:
    """README.md and the result pages under docs/results/."""
    results = sorted((ROOT / "docs" / "results").glob("*.md"))
    return ["README.md", *(str(path.relative_to(ROOT)) for path in results)]


def run(command: str) -> str:
    result = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise SystemExit(
            f"generated section failed (exit {result.returncode}): {command}\n{result.stderr}"
        )
    return result.stdout


def regenerate(text: str) -> str:
    def replace(match: re.Match) -> str:
        output = run(match.group("command"))
        return match.group(1) + output.rstrip() + "\n" + match.group(4)

    return SECTION.sub(replace, text)


def main(paths: list[str]) -> int:
    for path in paths or default_paths():
        target = ROOT / path
        target.write_text(regenerate(target.read_text(encoding="utf-8")), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
