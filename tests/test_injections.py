"""Injected regressions are caught by the regression points alone (issue #19).

Each injection is a tiny pytest plugin, loaded with ``-p`` into a real ``pytest benchmarks``
run on the tiny tier (the committed ``baselines/cpu/tiny-llama``), that breaks one thing a
library update could break: the footprint, the evaluation, the pruning ratio, the GGUF type,
the calibration text, the restore between tests, the rounding. The run must fail, and the
points it names must be the ones the injection touches; without an injection the same
selection passes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "baselines" / "cpu" / "tiny-llama"

# name -> (the -k selection it runs, the plugin's code, a test id the run must fail)
INJECTIONS = {
    "footprint drops the scale bits": (
        "rtn or dense",
        """
import dataclasses
import mpt_core.measure as measure
real = measure.measure
def without_scales(model, tensors, reference):
    tensors = {k: dataclasses.replace(v, scale_bits=0) for k, v in tensors.items()}
    return real(model, tensors, reference)
measure.measure = without_scales
""",
        "tiny-llama-wikitext2-rtn:8",
    ),
    "a worse model evaluates to NaN": (
        "magnitude",
        """
import dataclasses, math
import mpt_core.measure as measure
real = measure.perplexity
def nan_when_worse(*args, **kwargs):
    result = real(*args, **kwargs)
    return dataclasses.replace(result, ppl=math.nan) if result.ppl > 262 else result
measure.perplexity = nan_when_worse
""",
        "tiny-llama-wikitext2-magnitude:0.6",
    ),
    "10% fewer weights pruned": (
        "magnitude or wanda",
        """
import mpt_core.prune.mask as mask
real = mask.unstructured_mask
mask.unstructured_mask = lambda score, ratio, scope="layer": real(score, 0.9 * ratio, scope)
""",
        "tiny-llama-wikitext2-wanda:0.3",
    ),
    "a GGUF scheme mapped to its neighbour": (
        "gguf",
        """
import mpt_core.quant.gguf as gguf
gguf.SCHEMES["Q4_K_M"] = gguf.SCHEMES["Q4_K_S"]
""",
        "tiny-llama-wikitext2-gguf:Q4_K_M",
    ),
    "calibration drawn from the evaluation text": (
        "wanda or gptq or sparsegpt",
        """
import mpt_core.data as data
data.CALIBRATION_SPLITS["ptb"] = "test"
""",
        "tiny-llama-ptb-gptq:4",
    ),
    "a restore that misses one tensor": (
        "rtn or magnitude",
        """
import torch
import mpt_core.snapshot as snapshot
def restore_but_one(self, model):
    with torch.no_grad():
        for name, tensor in list(model.state_dict().items())[1:]:
            tensor.copy_(self._weights[name])
snapshot.Snapshot.restore = restore_but_one
""",
        "tiny-llama-wikitext2-rtn:4[group=16]",
    ),
    "floor instead of round in the grid": (
        "rtn or gptq",
        """
import torch
import mpt_core.quant.grid as grid
def floor_quantize(x, g):
    q = torch.clamp(torch.floor(x / g.scale) + g.zero, 0, g.maxq)
    return g.scale * (q - g.zero)
grid.quantize = floor_quantize
""",
        "tiny-llama-wikitext2-rtn:8",
    ),
}


def _run(tmp_path: Path, selection: str, code: str | None) -> subprocess.CompletedProcess:
    plugins = []
    if code is not None:
        (tmp_path / "mpt_injection.py").write_text(code, encoding="utf-8")
        plugins = ["-p", "mpt_injection"]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
        "HF_HUB_OFFLINE": "1",
        "COLUMNS": "300",
    }
    command = [
        sys.executable, "-m", "pytest", "benchmarks", "--mpt-tier", "cpu", "--mpt-model",
        "tiny-llama", "-k", f"tiny-llama and ({selection})", "-p", "no:randomly", "-p",
        "no:cacheprovider", "-q", "--benchmark-disable", "-rf", *plugins,
    ]  # fmt: skip
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory) -> subprocess.CompletedProcess:
    """Every selection below, without an injection: it must pass."""
    if not (TINY / "quant.csv").is_file():
        pytest.skip("the tiny tier is not recorded: scripts/record_tiny_tier.sh")
    if not os.environ.get("MPT_DATA_DIR"):
        pytest.skip("needs the offline text: set MPT_DATA_DIR")
    union = " or ".join(f"({selection})" for selection, _, _ in INJECTIONS.values())
    return _run(tmp_path_factory.mktemp("clean"), union, None)


def test_without_an_injection_the_points_pass(clean_run):
    assert clean_run.returncode == 0, clean_run.stdout[-3000:]
    assert " passed" in clean_run.stdout and " failed" not in clean_run.stdout


@pytest.mark.parametrize("name", sorted(INJECTIONS))
def test_an_injected_regression_fails_the_points_it_touches(name, clean_run, tmp_path):
    selection, code, must_fail = INJECTIONS[name]
    if "gguf" in selection:
        pytest.importorskip("llama_cpp", reason="llama.cpp's quantizer: scripts/setup_gguf.sh")
    assert f"[{must_fail}]" not in clean_run.stdout.split("short test summary")[-1]
    broken = _run(tmp_path, selection, code)
    assert broken.returncode == 1, broken.stdout[-3000:]
    assert f"[{must_fail}]" in broken.stdout, broken.stdout[-3000:]
