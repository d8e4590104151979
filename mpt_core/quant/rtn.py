"""Round-to-nearest (RTN) weight quantization: the baseline every PTQ paper reports.

Each group of ``group`` consecutive input weights of a row (the whole row when
no group is given) gets its own scale (and zero point unless ``sym``), and every
weight is rounded to the nearest grid point. No calibration data.
Storage: ``bits`` per weight, an fp16 scale per group, and an fp16 zero point per
group for the asymmetric grid (GPTQ's storage of zeros as floats).
"""

from __future__ import annotations

import torch

from mpt_core.engine.layerwise import block_linears
from mpt_core.quant.grid import check_group, find_grid, quantize, rtn_storage
from mpt_core.registry import Option, flag, positive_int, register
from mpt_core.storage import TensorStorage


@register(
    "rtn",
    family="quant",
    levels={"bits"},
    options={
        "group": Option(positive_int, None, "input weights per scale group (default: whole row)"),
        "sym": Option(flag, False, "symmetric grid, no zero point"),
    },
)
@torch.no_grad()
def rtn(model, stage, settings, calibration) -> dict[str, TensorStorage]:
    storage = {}
    for site, linear in block_linears(model):
        group = check_group(settings["group"], linear.in_features, site.path)
        linear.weight.copy_(quantize_groups(linear.weight, stage.bits, group, settings["sym"]))
        storage[site.weight] = rtn_storage(stage.bits, group, settings["sym"])
    return storage


def quantize_groups(weight: torch.Tensor, bits: int, group: int, sym: bool) -> torch.Tensor:
    """Quantize every ``group`` consecutive weights of each row on their own grid."""
    rows, cols = weight.shape
    groups = weight.float().reshape(rows * (cols // group), group)
    grid = find_grid(groups, bits, sym)
    return quantize(groups, grid).reshape(rows, cols).to(weight.dtype)
