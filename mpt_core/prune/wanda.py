"""Wanda: pruning by weights and activations (Sun, Liu, Bair & Kolter, "A Simple and
Effective Pruning Approach for Large Language Models", ICLR 2024, arXiv:2306.11695).

The score of weight W_ij is |W_ij| · ‖X_j‖₂, the magnitude times the norm of its input
feature over the calibration tokens; weights are compared within each output row (the
paper's "per output" comparison group) and the lowest are removed. No weight update.

Mapping to the authors' code (locuslab/wanda, ``lib/prune.py::prune_wanda`` and
``lib/layerwrapper.py::WrappedGPT``): ``scaler_row`` is their running mean of ‖X_j‖²
over samples (``engine.signals.InputNormStats``, shared with the methods built on Wanda's
score), the score is ``|W| * sqrt(scaler_row)`` (``signals.wanda_score``), unstructured
pruning removes the first ``int(columns * ratio)`` of a stable per-row sort, N:M the ``n``
lowest in every ``m`` consecutive columns (``mpt_core.prune.mask``).
"""

from __future__ import annotations

import torch
from torch import nn

from mpt_core.engine.layerwise import compress_layerwise
from mpt_core.engine.signals import InputNormStats, wanda_score
from mpt_core.prune.mask import select_mask
from mpt_core.registry import register
from mpt_core.storage import TensorStorage


@torch.no_grad()
def prune_linear(linear: nn.Linear, stats: InputNormStats, stage, settings: dict) -> TensorStorage:
    """Zero the lowest-scored weights of each output row (or of each N:M group)."""
    W = linear.weight.data
    W[select_mask(wanda_score(W, stats.scaler_row), stage, scope="row")] = 0
    return TensorStorage(nm=stage.nm)


@register("wanda", family="unstructured", levels={"ratio", "nm"}, needs_calibration=True)
def wanda(model, stage, settings, calibration) -> dict[str, TensorStorage]:
    return compress_layerwise(
        model,
        calibration.windows(settings),
        lambda _site, linear: InputNormStats(linear),
        lambda _site, linear, stats: prune_linear(linear, stats, stage, settings),
    )
