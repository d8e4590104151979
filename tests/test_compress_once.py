"""A point is compressed once per session, whatever the test order (issue #22): the rows of
one (model, spec) on several datasets share one compressed model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COUNTER = """
import json, os
import mpt_core.measure as measure
calls = []
real = measure.Session.measure_datasets
def counting(self, spec, *args, **kwargs):
    calls.append(str(getattr(spec, "spec", spec)))  # a Spec, or the Plan the harness made
    return real(self, spec, *args, **kwargs)
measure.Session.measure_datasets = counting
def pytest_unconfigure(config):
    with open(os.environ["MPT_COUNT_FILE"], "w") as handle:
        json.dump(calls, handle)
"""


@pytest.mark.parametrize("seed", [1, 2])
def test_each_point_compresses_once_in_any_order(tmp_path, seed):
    if not (ROOT / "baselines/cpu/tiny-llama/quant.csv").is_file():
        pytest.skip("the tiny tier is not recorded: scripts/record_tiny_tier.sh")
    (tmp_path / "mpt_counter.py").write_text(COUNTER, encoding="utf-8")
    counts = tmp_path / "calls.json"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
        "MPT_COUNT_FILE": str(counts),
    }
    command = [
        sys.executable, "-m", "pytest", "benchmarks", "--mpt-tier", "cpu", "--mpt-model",
        "tiny-llama", "-k", "tiny-llama and (rtn or magnitude)", "-p", "mpt_counter",
        "-p", "randomly", "-p", "no:cacheprovider", f"--randomly-seed={seed}", "-q",
        "--benchmark-disable",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:]
    calls = json.loads(counts.read_text())
    assert len(calls) == len(set(calls)), sorted(calls)
    assert {"dense", "rtn:8", "magnitude:0.5", "magnitude:2:4", "svd:0.2+rtn:8"} <= set(calls)
