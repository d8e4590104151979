"""Activation statistics the outlier-aware quantizers share: the largest |x| each input
channel of each block linear sees on the calibration windows in the float model
(SmoothQuant's ``get_act_scales``; LLM.int8()'s outlier columns).
"""

from __future__ import annotations

import torch
from torch import nn

from mpt_core.engine.layerwise import collect_stats, iterate_blocks


class InputAbsMax:
    """max |x_j| per input channel over every calibration token (``get_act_scales``)."""

    def __init__(self, _site=None, linear: nn.Linear | None = None):
        self.max: torch.Tensor | None = None

    def add_batch(self, inp: torch.Tensor, _out: torch.Tensor | None = None) -> None:
        batch_max = inp.reshape(-1, inp.shape[-1]).abs().amax(dim=0).float()
        self.max = batch_max if self.max is None else torch.maximum(self.max, batch_max)


def input_absmax(model: nn.Module, windows: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """Per block, per linear: max |x_j| of its inputs in the float model."""
    scales = []
    for index, block, inputs in iterate_blocks(model, windows):
        stats = collect_stats(block, inputs, InputAbsMax, index)
        scales.append({name: stat.max for name, stat in stats.items()})
    return scales
