"""A gate weaker than asked is a usage error, not a green run of skips (issue #23)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("option", ["--mpt-data-dir", "--mpt-baselines"])
def test_a_missing_folder_given_explicitly_stops_the_run(option):
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "benchmarks", option, "/nonexistent", "--collect-only"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 4
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [
        f"ERROR: {option} /nonexistent: no such folder (a gate given nothing to test is not green)"
    ]
    assert "Traceback" not in result.stdout + result.stderr
