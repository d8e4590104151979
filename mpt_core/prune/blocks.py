"""Removing whole decoder blocks: the shared step of ShortGPT, SLEB and depth pruning.

A removed block is deleted from ``model.model.layers``; the blocks after it move up,
and their attention modules get the new ``layer_idx`` (the key/value cache is indexed
by it), and ``config.num_hidden_layers`` (which LLaMA's forward slices the layer list
by) and any per-layer config list follow, so the model is a smaller model of the
same architecture, loadable from its config.
"""

from __future__ import annotations

import math

from torch import nn

from mpt_core.engine.layerwise import decoder_layers
from mpt_core.errors import SpecError


def blocks_to_remove(model: nn.Module, ratio: float) -> int:
    """Whole blocks for a ratio of the block count: round(R · L), at least one block kept."""
    total = len(decoder_layers(model))
    count = math.floor(ratio * total + 0.5)
    if count >= total:
        raise SpecError(f"ratio {ratio} would remove all {total} blocks; use a smaller ratio")
    return count


def remove_blocks(model: nn.Module, indices: list[int]) -> None:
    """Delete the decoder blocks at ``indices`` and renumber what stays."""
    layers = decoder_layers(model)
    doomed = set(indices)
    kept = [block for index, block in enumerate(layers) if index not in doomed]
    model.model.layers = nn.ModuleList(kept)
    for new_index, block in enumerate(kept):
        for module in block.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    config = model.config
    per_layer = getattr(config, "layer_types", None)
    if isinstance(per_layer, list):
        config.layer_types = [kind for index, kind in enumerate(per_layer) if index not in doomed]
    config.num_hidden_layers = len(kept)
