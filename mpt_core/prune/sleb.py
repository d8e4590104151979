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
``signals.loss_from`` (ASVD's sensitivity uses them too). Round r depends only on the
rounds before it, so a session keeps the rounds of its dense model and calibration windows
(``removal_order``) and every ratio after the first only adds rounds.
"""

from __future__ import annotations

import hashlib

import torch

from mpt_core.engine.layerwise import decoder_layers
from mpt_core.engine.signals import inputs_of_alive_blocks, loss_from
from mpt_core.models import state_dict_hash
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


_ORDERS: dict[str, list[int]] = {}  # one entry: the dense model a session restores


def removal_order(model, windows: torch.Tensor, early: int, latter: int, count: int) -> list[int]:
    """The first ``count`` blocks SLEB removes, in order. A round depends only on the rounds
    before it, so the rounds are kept for the session per (weights, windows, barriers) and a
    larger R only adds rounds to a smaller one's."""
    if count == 0:
        return []
    key = order_key(model, windows, early, latter)
    if key not in _ORDERS:
        _ORDERS.clear()
        _ORDERS[key] = []
    order = _ORDERS[key]
    alive = [index for index in range(len(decoder_layers(model))) if index not in order]
    while len(order) < count:
        order.append(alive.pop(least_harmful(model, alive, windows, early, latter)))
    return order[:count]


def order_key(model, windows: torch.Tensor, early: int, latter: int) -> str:
    """A digest of what the rounds depend on: every weight, the windows and the barriers."""
    digest = hashlib.sha256(f"{early}|{latter}|{windows.dtype}{tuple(windows.shape)}|".encode())
    digest.update(windows.cpu().contiguous().numpy().tobytes())
    digest.update(state_dict_hash(model).encode())
    return digest.hexdigest()


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
    remove_blocks(
        model, removal_order(model, windows, settings["early"], settings["latter"], count)
    )
    return {}
