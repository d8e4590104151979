"""Pieces shared by the methods that train weights on calibration windows (LoSparse,
Sheared LLaMA): which parameters take gradients, and which windows a step sees."""

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


def batches(windows: torch.Tensor, batch: int, step: int) -> torch.Tensor:
    """The windows of ``step``, taken in turn and wrapping around."""
    index = (torch.arange(batch, device=windows.device) + step * batch) % len(windows)
    return windows[index]
