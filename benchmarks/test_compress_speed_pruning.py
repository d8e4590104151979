"""What each unstructured / N:M pruning method costs to apply, on tiny-llama (pytest-benchmark).

One benchmark per method and level in one group; each round restores the model from a
snapshot first (not timed) and prunes it again with the same calibration windows (drawn
once, before timing). Nothing is asserted about time; each benchmark asserts that it did
the work it claims (the sparsity it was asked for). Run:
``pytest benchmarks/test_compress_speed_pruning.py``.
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
    pytest.param("magnitude:0.5", id="magnitude"),
    pytest.param(f"wanda:0.5[{CALIB}]", id="wanda"),
    pytest.param(f"wanda:2:4[{CALIB}]", id="wanda-2:4"),
    pytest.param(f"sparsegpt:0.5[{CALIB}]", id="sparsegpt"),
    pytest.param(f"sparsegpt:2:4[{CALIB}]", id="sparsegpt-2:4"),
    pytest.param(f"ria:0.5[{CALIB}]", id="ria"),
    pytest.param(f"ria:2:4[{CALIB}]", id="ria-2:4-permute"),
    pytest.param(f"ria:2:4[{CALIB},permute=false]", id="ria-2:4"),
    pytest.param(f"owl:0.5[base=wanda,{CALIB}]", id="owl-wanda"),
    pytest.param(f"owl:0.5[base=sparsegpt,{CALIB}]", id="owl-sparsegpt"),
]


@pytest.mark.parametrize("text", SPECS)
def test_pruning_time(benchmark, text):
    loaded = load_model("tiny-llama", device="cpu")
    model, spec = loaded.model, Spec.parse(text)
    snapshot = Snapshot(model)
    calibration = Calibration(loaded.tokenizer, SEQLEN)
    calibration.windows({"calib": None, "nsamples": NSAMPLES, "seed": 0})  # outside the timing
    benchmark.group = "pruning time, tiny-llama"
    footprint = benchmark.pedantic(
        compress,
        args=(model, spec, calibration),
        setup=lambda: snapshot.restore(model),
        rounds=3,
    )
    # OWL's layer ratios average to 0.5 before each row's count is floored
    assert footprint.sparsity == pytest.approx(0.5, abs=0.02)
