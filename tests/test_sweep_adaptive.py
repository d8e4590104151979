"""mpt sweep --adaptive: budgeted, inside the range, resumable, through the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _sweep(out: Path, budget: int, ratios: str = "0.0:0.9") -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "mpt_core.cli",
        "sweep",
        "--model",
        "tiny-llama",
        "--method",
        "magnitude",
        "--ratios",
        ratios,
        "--adaptive",
        "--budget",
        str(budget),
        "--seqlen",
        "32",
        "--windows",
        "2",
        "--out",
        str(out),
    ]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


def _ratios(out: Path) -> list[float]:
    specs = [json.loads(line)["spec"] for line in out.read_text().splitlines()]
    return [float(spec.split(":")[1]) for spec in specs]


def test_adaptive_sweep_spends_its_budget_inside_the_range_and_resumes(tmp_path):
    out = tmp_path / "adaptive.jsonl"
    assert _sweep(out, 4).returncode == 0
    first = _ratios(out)
    assert len(first) == 4 and len(set(first)) == 4
    assert all(0.0 <= ratio <= 0.9 for ratio in first)
    assert {0.0, 0.9} <= set(first)
    assert _sweep(out, 6).returncode == 0
    second = _ratios(out)
    assert second[:4] == first and len(second) == 6 and len(set(second)) == 6


def test_adaptive_sweep_rejects_a_bad_range(tmp_path):
    result = _sweep(tmp_path / "x.jsonl", 4, ratios="0.9:0.1")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("mpt: error: --adaptive needs --ratios lo:hi")
    assert "Traceback" not in result.stderr
