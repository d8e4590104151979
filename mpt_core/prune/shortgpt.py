"""ShortGPT: remove the blocks with the lowest Block Influence (Men et al., 2024, arXiv:2403.03853).

Block Influence BI_i = 1 − E_{X,t} [cos(x_{i,t}, x_{i+1,t})]: a block whose output
hidden state points where its input did changes little and can go. BI is measured
once, on calibration data through the dense model, and the ⌊R·L + ½⌋ blocks of
lowest BI are removed in one shot (the paper's Algorithm: no re-scoring between
removals). ``R`` is the fraction of blocks removed; the parameter count drops by
those blocks' parameters (embeddings, final norm and LM head stay).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mpt_core.engine.layerwise import LayerInputs, capture_layer0_inputs, decoder_layers, run_block
from mpt_core.prune.blocks import blocks_to_remove, remove_blocks
from mpt_core.registry import register
from mpt_core.storage import TensorStorage


@torch.no_grad()
def block_influence(model, windows: torch.Tensor) -> list[float]:
    """BI of every decoder block: 1 − mean cosine between its input and output tokens."""
    inputs = capture_layer0_inputs(model, windows)
    influence = []
    for block in decoder_layers(model):
        outputs = run_block(block, inputs)
        cosine = F.cosine_similarity(inputs.hidden.float(), outputs.float(), dim=-1)
        influence.append(1 - cosine.mean().item())
        inputs = LayerInputs(outputs, inputs.kwargs)
    return influence


@register("shortgpt", family="structured", levels={"ratio"}, needs_calibration=True)
def shortgpt(model, stage, settings, calibration) -> dict[str, TensorStorage]:
    count = blocks_to_remove(model, stage.ratio)
    influence = block_influence(model, calibration.windows(settings))
    lowest = sorted(range(len(influence)), key=influence.__getitem__)[:count]
    remove_blocks(model, lowest)
    return {}
