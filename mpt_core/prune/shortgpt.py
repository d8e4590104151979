"""ShortGPT: remove the blocks with the lowest Block Influence (Men et al., 2024, arXiv:2403.03853).

Block Influence BI_i = 1 − E_{X,t} [cos(x_{i,t}, x_{i+1,t})]: a block whose output
hidden state points where its input did changes little and can go. BI is measured
once, on calibration data through the dense model, and the ⌊R·L + ½⌋ blocks of
lowest BI are removed in one shot (the paper's Algorithm: no re-scoring between
removals). ``R`` is the fraction of blocks removed; the parameter count drops by
those blocks' parameters (embeddings, final norm and LM head stay). BI is
``engine.signals.block_influence`` (MoDeGPT ranks blocks by it too).
"""

from __future__ import annotations

from mpt_core.engine.signals import block_influence
from mpt_core.prune.blocks import blocks_to_remove, remove_blocks
from mpt_core.registry import register
from mpt_core.storage import TensorStorage


@register("shortgpt", family="structured", levels={"ratio"}, needs_calibration=True)
def shortgpt(model, stage, settings, calibration) -> dict[str, TensorStorage]:
    count = blocks_to_remove(model, stage.ratio)
    influence = block_influence(model, calibration.windows(settings))
    lowest = sorted(range(len(influence)), key=influence.__getitem__)[:count]
    remove_blocks(model, lowest)
    return {}
