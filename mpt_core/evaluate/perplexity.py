"""Perplexity over non-overlapping windows, the GPTQ/SparseGPT/Wanda protocol (and
``llama_perplexity``, llama.cpp's: second half of each context scored).

``n = numel // seqlen`` windows (or the first ``windows``); each window's loss is
the mean cross-entropy of its shifted logits, computed in fp32;
``ppl = exp(mean window loss)`` (the losses: ``evaluate.loss``; windows per forward
pass: ``evaluate.batching``).
The standard error comes from the spread of the window losses by the delta method:
``se(ppl) = ppl * std(loss) / sqrt(n)``.
A non-finite loss is a collapsed model: ppl is ``inf``, never an exception.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch

from mpt_core.engine.layerwise import decoder_layers, stem_modules
from mpt_core.engine.offload import streamed
from mpt_core.errors import DataError
from mpt_core.evaluate.batching import evaluation_batch
from mpt_core.evaluate.loss import next_token_nll
from mpt_core.models import compute_device, is_offloaded
from mpt_core.progress import bar


@dataclass(frozen=True)
class Perplexity:
    ppl: float
    stderr: float
    window_losses: tuple[float, ...]
    seqlen: int

    @property
    def windows(self) -> int:
        return len(self.window_losses)

    @property
    def collapsed(self) -> bool:
        return not math.isfinite(self.ppl)


def eval_windows(ids: torch.Tensor, seqlen: int, windows: int | None = None) -> torch.Tensor:
    """The token stream cut into non-overlapping windows, shape (n, seqlen)."""
    available = ids.shape[1] // seqlen
    if available == 0:
        raise DataError(
            f"the text has {ids.shape[1]} tokens, fewer than one window of --seqlen {seqlen}"
        )
    count = available if windows is None else min(windows, available)
    return ids[0, : count * seqlen].view(count, seqlen)


@torch.no_grad()
def window_losses(model, windows: torch.Tensor, batch_size: int | None = None) -> list[float]:
    """Mean shifted cross-entropy of each window, in fp32 (an offloaded model streamed
    through the compute device block by block)."""
    device = compute_device(model)
    batch_size = batch_size or evaluation_batch(model, windows.shape[1])
    losses: list[float] = []
    with _streamed_if_offloaded(model), bar(windows.shape[0], "perplexity") as advance:
        for start in range(0, windows.shape[0], batch_size):
            batch = windows[start : start + batch_size]
            losses.extend(_batch_losses(model, batch.to(device)))
            advance(batch.shape[0])
    return losses


def _streamed_if_offloaded(model):
    if not is_offloaded(model):
        return contextlib.nullcontext()
    return streamed(model, decoder_layers(model), stem_modules(model))


def _batch_losses(model, batch: torch.Tensor) -> list[float]:
    return next_token_nll(model, batch, batch[:, 1:]).mean(dim=1).tolist()


def perplexity(
    model, ids: torch.Tensor, seqlen: int, windows: int | None = None, batch_size: int | None = None
) -> Perplexity:
    """Perplexity of ``model`` on the token stream ``ids`` (shape (1, n))."""
    losses = window_losses(model, eval_windows(ids, seqlen, windows), batch_size)
    return summarize(losses, seqlen)


def llama_perplexity(
    model,
    ids: torch.Tensor,
    ctx: int,
    bos_id: int | None,
    chunks: int | None = None,
    batch_size: int | None = None,
) -> Perplexity:
    """llama.cpp's ``llama-perplexity`` protocol (tools/perplexity/perplexity.cpp,
    ``perplexity``): the stream cut into ``ctx``-token chunks, each chunk's first token
    replaced by BOS when the vocabulary adds one (``bos_id``), and only the second half
    scored: the logits at positions ctx/2 .. ctx-2 predict the chunk's next tokens.
    ``window_losses`` are each chunk's mean; ppl = exp(mean NLL over all scored tokens) and
    its standard error is llama.cpp's, over tokens: ppl·sqrt((E[nll²]−E[nll]²)/(count−1))."""
    windows = eval_windows(ids, ctx, chunks)
    first = ctx // 2
    nll: list[torch.Tensor] = []
    device = compute_device(model)
    batch_size = batch_size or evaluation_batch(model, ctx)
    with (
        torch.no_grad(),
        _streamed_if_offloaded(model),
        bar(windows.shape[0], "llama-perplexity") as advance,
    ):
        for start in range(0, windows.shape[0], batch_size):
            batch = windows[start : start + batch_size].to(device)
            nll.append(_second_half_nll(model, batch, first, bos_id).cpu())
            advance(batch.shape[0])
    per_token = torch.cat(nll).double()  # (chunks, ctx - first - 1)
    return _llama_summary(per_token, ctx)


def _second_half_nll(model, batch: torch.Tensor, first: int, bos_id: int | None) -> torch.Tensor:
    inputs = batch.clone()
    if bos_id is not None:
        inputs[:, 0] = bos_id
    return next_token_nll(model, inputs, batch[:, first + 1 :], first)


def _llama_summary(per_token: torch.Tensor, ctx: int) -> Perplexity:
    losses = tuple(per_token.mean(dim=1).tolist())
    if not torch.isfinite(per_token).all():
        return Perplexity(math.inf, math.inf, losses, ctx)
    mean = per_token.mean().item()
    ppl = math.exp(mean) if mean < 700 else math.inf
    count = per_token.numel()
    spread = (per_token.pow(2).mean().item() - mean * mean) / max(count - 1, 1)
    return Perplexity(ppl, ppl * math.sqrt(max(spread, 0.0)), losses, ctx)


def summarize(losses: list[float], seqlen: int) -> Perplexity:
    if not all(math.isfinite(loss) for loss in losses):
        return Perplexity(math.inf, math.inf, tuple(losses), seqlen)
    n = len(losses)
    mean = sum(losses) / n
    ppl = math.exp(mean) if mean < 700 else math.inf
    if n < 2 or not math.isfinite(ppl):
        return Perplexity(ppl, math.nan if n < 2 else math.inf, tuple(losses), seqlen)
    variance = sum((loss - mean) ** 2 for loss in losses) / (n - 1)
    return Perplexity(ppl, ppl * math.sqrt(variance / n), tuple(losses), seqlen)
