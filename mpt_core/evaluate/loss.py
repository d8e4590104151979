"""Next-token losses in fp32 without fp32 logits of the whole batch: the model's logits are
made fp32 and scored a chunk of positions at a time (``LOSS_CHUNK_ELEMENTS``).

Cross-entropy is computed row by row, so the per-token losses are bit-identical to those of
the whole batch's fp32 logits (tests/test_loss.py; the perplexity benchmark on SmolLM2-135M),
without their memory: 4 windows × 4096 × 32000 are 2 GB in fp32 and 2 GB more of
log-softmax, beside the model's own 1 GB of fp16 logits.

The head is not applied here chunk by chunk, which would spare the model's logits too: a
GEMM's rounding depends on its row count (on this CPU, a 2048-wide head differs in the last
bit at every chunk size), and on the CPU it measured slower (the head's weights are read
again for every chunk).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# fp32 logits per loss chunk: 16 MB; 64 to 128 positions of a 49k vocabulary were fastest on
# this machine, three times faster than one cross-entropy over the whole batch
LOSS_CHUNK_ELEMENTS = 1 << 22


def next_token_nll(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, first: int = 0
) -> torch.Tensor:
    """The fp32 loss of each position ``first`` .. T-2 of ``inputs`` (batch, T) against
    ``targets`` (batch, T-1-first): shape (batch, T-1-first)."""
    logits = model(inputs, use_cache=False).logits
    return torch.stack(
        [token_nll(logits[row, first:-1], targets[row]) for row in range(len(inputs))]
    )


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each position of one window's ``logits`` (positions, vocab) against
    ``targets``, the fp32 logits made ``LOSS_CHUNK_ELEMENTS`` at a time."""
    step = max(1, LOSS_CHUNK_ELEMENTS // logits.shape[-1])
    return torch.cat(
        [
            F.cross_entropy(
                logits[at : at + step].float(), targets[at : at + step], reduction="none"
            )
            for at in range(0, logits.shape[0], step)
        ]
    )
