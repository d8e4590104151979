"""What ADMM, DSnoT and BESA cost to apply, on tiny-llama (pytest-benchmark).

One benchmark per method and level in one group; each round restores the model from a
snapshot first (not timed) and prunes it again with the same calibration windows (drawn
once, before timing). Nothing is asserted about time; each benchmark asserts that it did
the work it claims (the sparsity it was asked for, within BESA's learned allocation).
Run: ``pytest benchmarks/test_compress_speed_admm_dsnot_besa.py``.
"""

from __future__ import annotations

import pytest

from mpt_core.models import load_model
from mpt_core.pipeline import Calibration, compress
from mpt_core.snapshot import Snapshot
from mpt_core.spec import Spec

pytestmark = pytest.mark.speed

SEQLEN = 32
NSAMPLES = 4
CALIB = f"nsamples={NSAMPLES}"

SPECS = [
    pytest.param(f"admm:0.5[{CALIB}]", 0.0, id="admm"),
    pytest.param(f"admm:2:4[{CALIB}]", 0.0, id="admm-2:4"),
    pytest.param(f"dsnot:0.5[init=wanda,{CALIB}]", 0.0, id="dsnot-wanda"),
    pytest.param(f"dsnot:0.5[init=sparsegpt,{CALIB}]", 0.01, id="dsnot-sparsegpt"),
    pytest.param(f"dsnot:2:4[init=wanda,{CALIB}]", 0.0, id="dsnot-wanda-2:4"),
    # BESA learns each row's sparsity: the mean lands within a candidate step and a
    # weight per row of the target
    pytest.param(f"besa:0.5[alloc=row,{CALIB}]", 0.03, id="besa-row"),
    pytest.param(f"besa:0.5[alloc=layer,{CALIB}]", 0.03, id="besa-layer"),
]


@pytest.mark.parametrize(("text", "tolerance"), SPECS)
def test_pruning_time(benchmark, text, tolerance):
    loaded = load_model("tiny-llama", device="cpu")
    model, spec = loaded.model, Spec.parse(text)
    snapshot = Snapshot(model)
    calibration = Calibration(loaded.tokenizer, SEQLEN)
    calibration.windows({"calib": None, "nsamples": NSAMPLES, "seed": 0})  # outside the timing
    benchmark.group = "pruning time (ADMM, DSnoT, BESA), tiny-llama"
    footprint = benchmark.pedantic(
        compress,
        args=(model, spec, calibration),
        setup=lambda: snapshot.restore(model),
        rounds=3,
    )
    assert footprint.sparsity == pytest.approx(0.5, abs=tolerance)
