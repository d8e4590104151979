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


def _collected(*args: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "benchmarks", "--collect-only", "-q", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return [line for line in result.stdout.splitlines() if "::" in line]


@pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="this machine's tier is the study tier"
)
def test_without_a_tier_the_machine_decides_and_a_tier_marker_widens_it():
    quant = _collected("-k", "quant")
    assert quant and not any("llama2-7b" in line for line in quant)  # CPU here: the CPU tier
    study = _collected("-m", "gpu")
    assert study and all("smollm2" not in line for line in study)
    assert any("llama2-7b-wikitext2-gguf" in line or "llama2-7b" in line for line in study)
