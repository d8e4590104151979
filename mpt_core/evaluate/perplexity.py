"""Perplexity over non-overlapping windows, the GPTQ/SparseGPT/Wanda protocol (and
``llama_perplexity``, llama.cpp's: second half of each context scored).

``n = numel // seqlen`` windows (or the first ``windows``); each window's loss is
the mean cross-entropy of its shifted logits, computed in fp32;
``ppl = exp(mean window loss)``. The fp32 logits exist only ``LOSS_CHUNK_ELEMENTS`` at a
time (a window's positions in chunks): the per-token losses are bit-identical to those of
the whole batch's fp32 logits, without their memory (4 × 4096 × 32000 fp32 is 2 GB, and its
log-softmax another 2 GB) and at a third of their cost on the CPU
(``benchmarks/test_perplexity_speed.py``). Windows per forward pass: ``CPU_BATCH`` off CUDA
(the CPU tier's protocol), and on CUDA as many as the free memory holds
(``batch_for_memory``); a causal window's loss does not depend on its batch neighbours.
The standard error comes from the spread of the window losses by the delta method:
``se(ppl) = ppl * std(loss) / sqrt(n)``.
A non-finite loss is a collapsed model: ppl is ``inf``, never an exception.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mpt_core.engine.layerwise import decoder_layers, stem_modules
from mpt_core.engine.offload import streamed
from mpt_core.errors import DataError
from mpt_core.models import HEADROOM, compute_device, is_offloaded
from mpt_core.progress import bar

CPU_BATCH = 4  # windows per forward pass off CUDA: the CPU tier's baselines were made so
# fp32 logits per loss chunk: 16 MB, within a server L3; 64 to 128 positions of a
# 32k-49k vocabulary were fastest on this machine, and a chunk's per-token losses are
# bit-identical to the whole batch's (tests/test_perplexity.py)
LOSS_CHUNK_ELEMENTS = 1 << 22
MAX_CUDA_BATCH = 64


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
    logits = model(batch, use_cache=False).logits
    means = [token_nll(logits[row, :-1], batch[row, 1:]).mean() for row in range(len(batch))]
    return torch.stack(means).tolist()


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each position of one window's ``logits`` (positions, vocab) against
    ``targets``, in fp32, the fp32 logits made ``LOSS_CHUNK_ELEMENTS`` at a time."""
    step = max(1, LOSS_CHUNK_ELEMENTS // logits.shape[-1])
    return torch.cat(
        [
            F.cross_entropy(
                logits[at : at + step].float(), targets[at : at + step], reduction="none"
            )
            for at in range(0, logits.shape[0], step)
        ]
    )


def evaluation_batch(model, seqlen: int) -> int:
    """Windows per forward pass: ``CPU_BATCH`` off CUDA, else what the free memory holds."""
    device = compute_device(model)
    if device.type != "cuda":
        return CPU_BATCH
    free = torch.cuda.mem_get_info(device)[0]
    return batch_for_memory(free, window_bytes(model.config, seqlen, _element_size(model)))


def window_bytes(config, seqlen: int, element_size: int) -> int:
    """Device memory one window's forward pass may need at once: its logits (kept for the
    whole batch), one block's activations (hidden, MLP and attention scores, were attention
    eager) and a loss chunk's fp32 logits and log-softmax."""
    text = getattr(config, "text_config", config)
    logits = seqlen * text.vocab_size * element_size
    block = seqlen * (4 * text.hidden_size + 3 * text.intermediate_size) * element_size
    scores = text.num_attention_heads * seqlen * seqlen * element_size
    return logits + block + scores + 2 * 4 * LOSS_CHUNK_ELEMENTS


def batch_for_memory(free_bytes: int, per_window: int) -> int:
    """As many windows as fit in the free memory less ``models.HEADROOM``, 1 to
    ``MAX_CUDA_BATCH``."""
    return max(1, min(MAX_CUDA_BATCH, int((1 - HEADROOM) * free_bytes) // per_window))


def _element_size(model) -> int:
    return next(model.parameters()).element_size()


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
    logits = model(inputs, use_cache=False).logits
    targets = batch[:, first + 1 :]
    return torch.stack(
        [token_nll(logits[row, first:-1], targets[row]) for row in range(len(batch))]
    )


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
