"""Pieces shared by the methods that train weights on calibration windows (LoSparse,
Sheared LLaMA): which parameters take gradients, in which precision, and which windows a
step sees."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def training_only(model: nn.Module, params: list[nn.Parameter]):
    """Gradients for ``params`` alone; every flag is put back afterwards."""
    flags = {param: param.requires_grad for param in model.parameters()}
    try:
        for param in flags:
            param.requires_grad_(False)
        for param in params:
            param.requires_grad_(True)
        with torch.enable_grad():
            yield
    finally:
        for param, flag in flags.items():
            param.requires_grad_(flag)


@contextmanager
def in_fp32(model: nn.Module):
    """Train in fp32 whatever the model's dtype, and return it to its dtype after. The
    reference trainers keep fp32 master weights (Sheared LLaMA's composer AMP, LoSparse's
    fp32 fine-tuning): an AdamW step on fp16 weights loses its eps (1e-8 rounds to 0) and
    the updates, and diverges. An fp32 model is left untouched."""
    dtype = next(model.parameters()).dtype
    if dtype == torch.float32:
        yield
        return
    model.float()
    try:
        yield
    finally:
        model.to(dtype)


def batches(windows: torch.Tensor, batch: int, step: int) -> torch.Tensor:
    """The windows of ``step``, taken in turn and wrapping around."""
    index = (torch.arange(batch, device=windows.device) + step * batch) % len(windows)
    return windows[index]
