"""Windows per forward pass: ``CPU_BATCH`` off CUDA (the CPU tier's protocol), and on CUDA
as many as the free memory holds. A causal window's loss does not depend on its batch
neighbours, so the batch changes only the speed (and float rounding on a GPU)."""

from __future__ import annotations

import torch
from torch import nn

from mpt_core.evaluate.loss import LOSS_CHUNK_ELEMENTS
from mpt_core.models import HEADROOM, compute_device

CPU_BATCH = 4  # the CPU tier's baselines were measured so (protocols.CPU_EVAL_BATCH)
MAX_CUDA_BATCH = 64


def evaluation_batch(model: nn.Module, seqlen: int) -> int:
    """Windows per forward pass of ``model`` at ``seqlen``."""
    device = compute_device(model)
    if device.type != "cuda":
        return CPU_BATCH
    free = torch.cuda.mem_get_info(device)[0]
    element_size = next(model.parameters()).element_size()
    per_window = window_bytes(model.config, seqlen, element_size)
    return batch_for_memory(free, per_window)


def window_bytes(config, seqlen: int, element_size: int) -> int:
    """Device memory one window may need at once: its logits (kept for the whole batch),
    one block's activations (hidden, MLP, and attention scores were attention eager), a
    loss chunk's fp32 logits and log-softmax."""
    text = config.get_text_config()
    output = seqlen * text.vocab_size * element_size
    block = seqlen * (4 * text.hidden_size + 3 * text.intermediate_size) * element_size
    scores = text.num_attention_heads * seqlen * seqlen * element_size
    return output + block + scores + 2 * 4 * LOSS_CHUNK_ELEMENTS


def batch_for_memory(free_bytes: int, per_window: int) -> int:
    """As many windows as fit in the free memory less ``models.HEADROOM``, 1 to
    ``MAX_CUDA_BATCH``."""
    return max(1, min(MAX_CUDA_BATCH, int((1 - HEADROOM) * free_bytes) // per_window))
