"""Magnitude pruning: remove the weights of smallest absolute value.

The classic baseline (Han et al., 2015; the "Magnitude" row of Wanda's and the
study's tables). No calibration data. ``scope=layer`` (default, as Wanda's
baseline code) compares all weights of a matrix; ``scope=row`` compares within
each output row; ``magnitude:N:M`` prunes N of every M consecutive weights.
"""

from __future__ import annotations

import torch

from mpt_core.engine.layerwise import block_linears
from mpt_core.prune.mask import SCOPES, select_mask
from mpt_core.registry import Option, one_of, register
from mpt_core.storage import TensorStorage


@register(
    "magnitude",
    family="unstructured",
    levels={"ratio", "nm"},
    options={"scope": Option(one_of(SCOPES, "scope"), "layer", "layer or row")},
)
@torch.no_grad()
def magnitude(model, stage, settings, calibration) -> dict[str, TensorStorage]:
    storage = {}
    for site, linear in block_linears(model):
        weight = linear.weight
        weight[select_mask(weight.abs().float(), stage, settings["scope"])] = 0
        storage[site.weight] = TensorStorage(nm=stage.nm)
    return storage
