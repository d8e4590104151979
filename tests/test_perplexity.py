"""Perplexity: equal to a plain implementation of the protocol, batch-invariant, never crashing."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from torch import nn

from mpt_core.errors import DataError
from mpt_core.evaluate import batching, loss
from mpt_core.evaluate.batching import batch_for_memory, evaluation_batch
from mpt_core.evaluate.perplexity import (
    eval_windows,
    perplexity,
    summarize,
    window_losses,
)
from mpt_core.snapshot import Snapshot

pytestmark = pytest.mark.usefixtures("one_thread")

SEQLEN = 128


def reference_perplexity(model, ids: torch.Tensor, seqlen: int) -> tuple[float, list[float]]:
    """The GPTQ/Wanda protocol written out plainly, in float64: non-overlapping windows of
    ``seqlen`` tokens (the remainder dropped), mean next-token NLL per window, exp of the
    mean over windows."""
    losses = []
    for i in range(ids.shape[1] // seqlen):
        x = ids[:, i * seqlen : (i + 1) * seqlen]
        with torch.no_grad():
            logits = model(x).logits.double()[0]
        log_probs = torch.log_softmax(logits[:-1], dim=-1)
        targets = x[0, 1:]
        nll = -log_probs[torch.arange(seqlen - 1), targets]
        losses.append(nll.sum().item() / (seqlen - 1))
    return math.exp(sum(losses) / len(losses)), losses


def test_perplexity_equals_a_plain_implementation(tiny, wikitext_ids):
    ids = wikitext_ids[:, : SEQLEN * 6 + 37]  # a ragged tail that must be dropped
    expected, expected_losses = reference_perplexity(tiny.model, ids, SEQLEN)
    result = perplexity(tiny.model, ids, SEQLEN)
    assert result.windows == 6 and result.seqlen == SEQLEN
    assert result.ppl == pytest.approx(expected, rel=1e-6)
    assert result.window_losses == pytest.approx(expected_losses, rel=1e-6)
    assert not result.collapsed
    # an untrained model on English text: far from uniform (258) and far from perfect (1)
    assert 50 < result.ppl < 1000


def test_windows_limits_to_the_first_n(tiny, wikitext_ids):
    ids = wikitext_ids[:, : SEQLEN * 6]
    full = perplexity(tiny.model, ids, SEQLEN)
    first = perplexity(tiny.model, ids, SEQLEN, windows=2)
    assert first.windows == 2
    assert first.window_losses == pytest.approx(full.window_losses[:2], rel=1e-6)
    assert perplexity(tiny.model, ids, SEQLEN, windows=99).windows == 6


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_batch_size_does_not_change_the_result(tiny, wikitext_ids, batch_size):
    ids = wikitext_ids[:, : SEQLEN * 7]
    one = perplexity(tiny.model, ids, SEQLEN, batch_size=1)
    other = perplexity(tiny.model, ids, SEQLEN, batch_size=batch_size)
    assert other.windows == 7
    assert other.ppl == pytest.approx(one.ppl, rel=1e-6)
    assert other.window_losses == pytest.approx(one.window_losses, rel=1e-6)


def whole_batch_losses(model, windows: torch.Tensor) -> list[float]:
    """The loss as it was before chunking: the whole batch's fp32 logits at once."""
    with torch.no_grad():
        logits = model(windows, use_cache=False).logits.float()
    per_token = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1), reduction="none"
    )
    return per_token.view(windows.shape[0], -1).mean(dim=1).tolist()


@pytest.mark.parametrize("chunk_elements", [258 * 7, 258 * 64, 1 << 22])
def test_chunked_fp32_logits_give_bit_identical_losses(
    tiny, wikitext_ids, monkeypatch, chunk_elements
):
    # 7 and 64 positions a chunk (a ragged last chunk), and the whole window in one
    monkeypatch.setattr(loss, "LOSS_CHUNK_ELEMENTS", chunk_elements)
    windows = eval_windows(wikitext_ids, SEQLEN, 4)
    assert window_losses(tiny.model, windows, batch_size=4) == whole_batch_losses(
        tiny.model, windows
    )


def test_off_cuda_the_batch_is_the_cpu_tiers(tiny):
    assert evaluation_batch(tiny.model, SEQLEN) == batching.CPU_BATCH


def test_on_cuda_the_batch_follows_the_free_memory(tiny, monkeypatch):
    monkeypatch.setattr(batching, "compute_device", lambda _: torch.device("cuda"))
    per_window = batching.window_bytes(tiny.model.config, SEQLEN, 4)
    for windows in (1, 5, 40):
        free = int(windows * per_window / (1 - batching.HEADROOM)) + 1
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda _device, free=free: (free, free))
        assert evaluation_batch(tiny.model, SEQLEN) == windows


def test_the_memory_batch_is_at_least_one_and_at_most_the_cap():
    assert batch_for_memory(0, 10) == 1
    assert batch_for_memory(10**15, 10) == batching.MAX_CUDA_BATCH
    assert batch_for_memory(1000, 100) == 8  # 80% of the free memory: 800 bytes


def test_a_longer_window_needs_more_than_proportionally_more_memory(tiny):
    # attention scores grow with the square of the length
    short = batching.window_bytes(tiny.model.config, 128, 2)
    long = batching.window_bytes(tiny.model.config, 1024, 2)
    chunk = 2 * 4 * loss.LOSS_CHUNK_ELEMENTS
    assert long - chunk > 8 * (short - chunk)


def test_eval_windows_cut_the_stream_without_overlap():
    ids = torch.arange(10 * 4 + 3).unsqueeze(0)
    windows = eval_windows(ids, 4)
    assert windows.shape == (10, 4)
    assert torch.equal(windows.flatten(), torch.arange(40))
    assert eval_windows(ids, 4, windows=3).shape == (3, 4)
    with pytest.raises(DataError, match="fewer than one window"):
        eval_windows(ids, 44)


# ------------------------------------------------------------------- collapse


class ConstantLogits(nn.Module):
    """A stand-in causal LM whose logits are one value everywhere."""

    def __init__(self, value: float, vocab: int = 11):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.value, self.vocab = value, vocab

    def forward(self, input_ids, **_):
        class Out:
            logits = torch.full((*input_ids.shape, self.vocab), self.value)

        return Out()


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_logits_give_inf_not_a_crash(value):
    ids = torch.randint(0, 11, (1, 64))
    result = perplexity(ConstantLogits(value), ids, 16)
    assert result.ppl == math.inf
    assert result.collapsed
    assert result.windows == 4


def test_uniform_logits_give_the_vocabulary_size():
    ids = torch.randint(0, 11, (1, 64))
    result = perplexity(ConstantLogits(0.0), ids, 16)
    assert result.ppl == pytest.approx(11, rel=1e-6)
    assert result.stderr == pytest.approx(0, abs=1e-9)


def test_a_nan_weight_collapses_the_real_model(tiny, wikitext_ids):
    model = tiny.model
    snapshot = Snapshot(model)
    try:
        with torch.no_grad():
            model.model.layers[0].mlp.down_proj.weight[0, 0] = math.nan
        result = perplexity(model, wikitext_ids[:, : SEQLEN * 2], SEQLEN)
    finally:
        snapshot.restore(model)
    assert result.collapsed and result.ppl == math.inf
    assert math.isfinite(perplexity(model, wikitext_ids[:, : SEQLEN * 2], SEQLEN).ppl)


def test_window_losses_are_fp32_even_for_a_half_model():
    torch.manual_seed(0)
    ids = torch.randint(0, 11, (1, 32))
    logits = torch.randn(2, 16, 11)

    class HalfLogits(ConstantLogits):
        def forward(self, input_ids, **_):
            class Out:
                pass

            Out.logits = logits.half()
            return Out()

    losses = window_losses(HalfLogits(0.0), eval_windows(ids, 16))
    windows = eval_windows(ids, 16)
    expected = [
        nn.functional.cross_entropy(logits.half().float()[i, :-1], windows[i, 1:]).item()
        for i in range(2)
    ]
    assert losses == pytest.approx(expected, rel=1e-6)


# --------------------------------------------------------------------- stderr


@pytest.mark.parametrize(
    "losses",
    [[1.0, 2.0, 3.0, 2.5], [4.2, 4.1], [5.5, 5.0, 5.25, 5.75, 6.0, 4.5, 5.1]],
)
def test_stderr_is_the_delta_method_on_window_losses(losses):
    result = summarize(losses, 64)
    mean = statistics.fmean(losses)
    ppl = math.exp(mean)
    assert result.ppl == pytest.approx(ppl, rel=1e-12)
    # d exp(m)/dm = exp(m): se(ppl) = ppl * sd(loss) / sqrt(n), sd with n - 1
    assert result.stderr == pytest.approx(ppl * statistics.stdev(losses) / math.sqrt(len(losses)))
    assert result.window_losses == tuple(losses) and result.seqlen == 64


def test_stderr_of_identical_losses_is_zero_and_of_one_window_undefined():
    assert summarize([2.0, 2.0, 2.0], 8).stderr == 0.0
    single = summarize([2.0], 8)
    assert single.ppl == pytest.approx(math.exp(2.0)) and math.isnan(single.stderr)


def test_overflowing_mean_loss_is_inf_without_error():
    result = summarize([800.0, 900.0], 8)
    assert result.ppl == math.inf and result.collapsed
    assert summarize([1.0, math.nan], 8).ppl == math.inf
