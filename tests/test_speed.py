"""The throughput functions do the work they claim, and name the kernels honestly.

No timing is asserted anywhere: speed lives in ``benchmarks/test_speed_throughput.py``.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from conftest import needs_data
from mpt_core.evaluate.speed import (
    decode,
    kernel_kind,
    prefill,
    real_kernel,
    start_decode,
    use_real_kernel,
)
from mpt_core.pipeline import Calibration, compress
from mpt_core.spec import Spec

HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None


@pytest.fixture
def ids(fresh_tiny):
    generator = torch.Generator().manual_seed(0)
    return torch.randint(2, len(fresh_tiny.tokenizer), (3, 24), generator=generator)


@torch.no_grad()
def greedy_without_cache(model, prompt: torch.Tensor, steps: int) -> torch.Tensor:
    """The reference: every step recomputes the whole sequence."""
    sequence = prompt
    for _ in range(steps):
        token = model(sequence, use_cache=False).logits[:, -1:].argmax(-1)
        sequence = torch.cat([sequence, token], dim=1)
    return sequence[:, prompt.shape[1] :]


def test_prefill_returns_each_windows_last_logits(fresh_tiny, ids, one_thread):
    model = fresh_tiny.model
    with torch.no_grad():
        expected = model(ids, use_cache=False).logits[:, -1]
    torch.testing.assert_close(prefill(model, ids, batch_size=2), expected, rtol=1e-5, atol=1e-5)


def test_decode_with_the_kv_cache_generates_what_recomputation_does(fresh_tiny, ids, one_thread):
    model, prompt = fresh_tiny.model, ids[:1, :8]
    generated = decode(model, start_decode(model, prompt), steps=12)
    assert generated.shape == (1, 12)
    assert torch.equal(generated, greedy_without_cache(model, prompt, 12))


@pytest.mark.skipif(not HAS_BNB, reason="needs bitsandbytes: pip install -e .[backends]")
def test_nf4_runs_bitsandbytes_linear4bit_with_the_simulated_models_numbers(fresh_tiny, ids):
    import bitsandbytes as bnb

    model, spec = fresh_tiny.model, Spec.parse("nf4")
    with torch.no_grad():
        dense = model(ids, use_cache=False).logits
        compress(model, spec, None)
        simulated = model(ids, use_cache=False).logits
    assert use_real_kernel(spec, model) == "linear4bit"
    linears = [m for m in model.model.layers.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linears) == 2 * 7  # q, k, v, o, gate, up, down in each of 2 blocks
    with torch.no_grad():
        real = model(ids, use_cache=False).logits
    # the simulated weights are NF4 values already; re-storing them moves only the
    # double-quantized block scales a little: far less than NF4 itself moves the model
    assert (real - simulated).abs().max() < 0.05 * (simulated - dense).abs().max()
    assert kernel_kind(spec, model).startswith("bitsandbytes Linear4bit (cpu, float32")


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("dense", "dense GEMM (cpu, float32)"),
        ("rtn:4[group=16]", "simulated quantization: no speed-up"),
        ("magnitude:0.5", "masked weights (zeros stored densely: no sparse kernel)"),
        ("magnitude:2:4", "N:M-masked weights (no sparse kernel on this device)"),
        ("svd:0.3", "two thin dense GEMMs per factorised layer"),
    ],
)
def test_kernel_kind_says_when_a_compressed_model_runs_dense_kernels(fresh_tiny, spec, words):
    parsed = Spec.parse(spec)
    compress(fresh_tiny.model, parsed, None)
    assert real_kernel(parsed, fresh_tiny.model) is None
    assert words in kernel_kind(parsed, fresh_tiny.model)


@needs_data
@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("int8[nsamples=2]", "LLM.int8() simulated: outlier columns found per call"),
        ("smoothquant:8[nsamples=2]", "per-token fake quantization of the activations"),
    ],
)
def test_kernel_kind_names_the_extra_work_of_a_simulated_int8_forward(fresh_tiny, spec, words):
    parsed = Spec.parse(spec)
    compress(fresh_tiny.model, parsed, Calibration(fresh_tiny.tokenizer, 32))
    assert words in kernel_kind(parsed, fresh_tiny.model)


def test_two_four_has_a_real_kernel_only_on_cuda_in_half_precision(fresh_tiny):
    assert real_kernel(Spec.parse("magnitude:2:4"), fresh_tiny.model) is None  # cpu, fp32
    assert real_kernel(Spec.parse("magnitude:2:4+rtn:4"), fresh_tiny.model) is None
