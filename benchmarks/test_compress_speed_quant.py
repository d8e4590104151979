"""What each quantization method costs to apply, on tiny-llama (pytest-benchmark).

One benchmark per method in one group; each round restores the model from a snapshot
first (not timed) and quantizes it again with the same calibration windows (drawn once,
before timing). Nothing is asserted about time; each benchmark asserts that it did the
work it claims (the weights changed, the footprint is the method's). Run:
``pytest benchmarks/test_compress_speed_quant.py``.
"""

from __future__ import annotations

import importlib.util

import pytest

from mpt_core.models import load_model, state_dict_hash
from mpt_core.pipeline import Calibration, compress
from mpt_core.snapshot import Snapshot
from mpt_core.spec import Spec

pytestmark = pytest.mark.speed

SEQLEN = 32
NSAMPLES = 4
HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None
NEEDS_BNB = pytest.mark.skipif(not HAS_BNB, reason="needs bitsandbytes (pip install bitsandbytes)")

SPECS = [
    pytest.param("rtn:4[group=32]", id="rtn"),
    pytest.param(f"gptq:4[group=32,nsamples={NSAMPLES}]", id="gptq"),
    pytest.param(f"gptq:4[group=32,act_order,nsamples={NSAMPLES}]", id="gptq-act_order"),
    pytest.param(f"awq:4[group=32,nsamples={NSAMPLES}]", id="awq"),
    pytest.param(f"smoothquant:8[nsamples={NSAMPLES}]", id="smoothquant"),
    pytest.param(f"int8[nsamples={NSAMPLES}]", id="int8"),
    pytest.param(f"int8[backend=bitsandbytes,nsamples={NSAMPLES}]", id="int8-bnb", marks=NEEDS_BNB),
    pytest.param("nf4", id="nf4"),
    pytest.param("nf4[double_quant]", id="nf4-double_quant"),
    pytest.param("nf4[backend=bitsandbytes]", id="nf4-bnb", marks=NEEDS_BNB),
    pytest.param("fp4", id="fp4"),
]


@pytest.mark.parametrize("text", SPECS)
def test_quantization_time(benchmark, text):
    loaded = load_model("tiny-llama", device="cpu")
    model, spec = loaded.model, Spec.parse(text)
    original = state_dict_hash(model)
    snapshot = Snapshot(model)
    calibration = Calibration(loaded.tokenizer, SEQLEN)
    settings = {"calib": None, "nsamples": NSAMPLES, "seed": 0}
    calibration.windows(settings)  # drawn and tokenized once, outside the timing
    benchmark.group = "quantization time, tiny-llama"
    footprint = benchmark.pedantic(
        compress,
        args=(model, spec, calibration),
        setup=lambda: snapshot.restore(model),
        rounds=3,
    )
    assert state_dict_hash(model) != original
    assert footprint.compressed_numel > 0 and 4 <= footprint.bits_per_weight <= 9
