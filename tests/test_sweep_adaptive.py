"""mpt sweep --adaptive: budgeted, inside the range, resumable, through the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from argparse import Namespace
from dataclasses import replace
from pathlib import Path

from conftest import needs_data
from mpt_core.commands.sweep import _measured_ratios
from mpt_core.measure import Session
from mpt_core.records import append
from mpt_core.spec import Spec

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


@needs_data
def test_adaptive_resume_counts_only_points_measured_as_this_sweep_measures(tmp_path, tiny):
    """The points an adaptive sweep resumes from share its whole key (#23): a ratio
    measured in another dtype, on another device kind or with other windows is not one."""
    session = Session(tiny, seqlen=64)
    same = session.measure(Spec.parse("magnitude:0.3"), "ptb", 2)
    others = [
        replace(same, spec="magnitude:0.5", dtype="bfloat16"),
        replace(same, spec="magnitude:0.6", device="cuda:0"),
        replace(same, spec="magnitude:0.7", windows=3),
        replace(same, spec="magnitude:0.8", seqlen=32),
    ]
    out = tmp_path / "adaptive.jsonl"
    for record in [same, *others]:
        append(out, record)
    args = Namespace(method="magnitude", dataset="ptb", windows=2, out=str(out))
    assert _measured_ratios(args, session, "") == [(0.3, same.value)]
