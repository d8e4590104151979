"""SLEB: streamlining LLMs through redundancy verification and elimination of transformer
blocks (Song et al., ICML 2024, arXiv:2402.09025).

Blocks go one at a time: in each round every remaining candidate block is switched
off in turn, the calibration loss (summed token NLL of the model without it) is
measured, and the block whose absence costs least is removed for good before the
next round re-scores the rest. As the authors' ``sleb.py``: the first and last
``early``/``latter`` remaining blocks are never candidates (barriers of 1 by default);
on a model too shallow to keep both barriers and still offer a candidate (the 2-block
tiny model) the barriers are dropped. ``R`` is the fraction of blocks removed,
rounded to whole blocks.

A round costs one pass to record every remaining block's input and, per candidate,
the blocks after it: the blocks before a candidate see the same input whichever
later block is off. The two passes are ``engine.signals.inputs_of_alive_blocks`` and
``signals.loss_from`` (ASVD's sensitivity uses them too).
"""

from __future__ import annotations

import torch

from mpt_core.engine.layerwise import decoder_layers
from mpt_core.engine.signals import inputs_of_alive_blocks, loss_from
from mpt_core.prune.blocks import blocks_to_remove, remove_blocks
from mpt_core.registry import Option, nonnegative_int, register
from mpt_core.storage import TensorStorage


def least_harmful(model, alive: list[int], windows: torch.Tensor, early: int, latter: int) -> int:
    """Position in ``alive`` of the block whose removal raises the calibration loss least."""
    blocks = decoder_layers(model)
    if len(alive) - early - latter < 1:
        early = latter = 0
    entering = inputs_of_alive_blocks(model, alive, windows)
    losses = {
        j: loss_from(model, [blocks[i] for i in alive[j + 1 :]], entering[j], windows)
        for j in range(early, len(alive) - latter)
    }
    return min(losses, key=losses.get)


@register(
    "sleb",
    family="structured",
    levels={"ratio"},
    needs_calibration=True,
    options={
        "early": Option(nonnegative_int, 1, "leading blocks never removed"),
        "latter": Option(nonnegative_int, 1, "trailing blocks never removed"),
    },
)
def sleb(model, stage, settings, calibration) -> dict[str, TensorStorage]:
    count = blocks_to_remove(model, stage.ratio)
    windows = calibration.windows(settings)
    alive = list(range(len(decoder_layers(model))))
    removed = []
    for _ in range(count):
        position = least_harmful(model, alive, windows, settings["early"], settings["latter"])
        removed.append(alive.pop(position))
    remove_blocks(model, removed)
    return {}
