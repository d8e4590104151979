"""The uniform integer grid shared by RTN and GPTQ (GPTQ's ``Quantizer``), and the group
sizes and storage of grid-quantized weights (RTN, GPTQ, AWQ).

Asymmetric: per group, the range [min(x, 0), max(x, 0)] maps onto 0..2^b-1 with
an integer zero point. Symmetric: the range is [-max|x|, max|x|] and the zero
point sits mid-grid. An all-zero group gets the range [-1, 1] so that its
scale is never 0. Values are returned dequantized (scale * (q - zero)): mpt
simulates quantization and counts the storage the integers would take.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mpt_core.engine.layerwise import block_linears
from mpt_core.errors import SpecError
from mpt_core.storage import TensorStorage


@dataclass(frozen=True)
class Grid:
    scale: torch.Tensor  # (rows, 1) per group
    zero: torch.Tensor  # (rows, 1)
    maxq: int


def find_grid(x: torch.Tensor, bits: int, sym: bool) -> Grid:
    """Scale and zero point for each row of ``x`` (one row = one group)."""
    maxq = 2**bits - 1
    xmin = torch.clamp(x.min(dim=1, keepdim=True).values, max=0)
    xmax = torch.clamp(x.max(dim=1, keepdim=True).values, min=0)
    if sym:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = torch.where(xmin < 0, -xmax, xmin)
    empty = (xmin == 0) & (xmax == 0)
    xmin = torch.where(empty, -torch.ones_like(xmin), xmin)
    xmax = torch.where(empty, torch.ones_like(xmax), xmax)
    scale = (xmax - xmin) / maxq
    zero = torch.full_like(scale, (maxq + 1) / 2) if sym else torch.round(-xmin / scale)
    return Grid(scale, zero, maxq)


def quantize(x: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Round ``x`` to the grid and return the dequantized values."""
    q = torch.clamp(torch.round(x / grid.scale) + grid.zero, 0, grid.maxq)
    return grid.scale * (q - grid.zero)


def check_group(group: int | None, width: int, where: str) -> int:
    """The group size to use (the whole row when None); it must divide the width."""
    if group is None:
        return width
    if group <= 0 or width % group:
        divisors = [d for d in (32, 64, 128, 256) if width % d == 0]
        raise SpecError(
            f"group={group} does not divide the input width {width} of {where}; "
            f"groups that do: {', '.join(map(str, divisors)) or 'none of 32/64/128/256'}"
        )
    return group


def check_groups(model: nn.Module, group: int | None) -> dict[str, int]:
    """Each linear's group size (block-relative name), checked before any calibration."""
    return {
        site.name: check_group(group, linear.in_features, site.path)
        for site, linear in block_linears(model)
    }


def rtn_storage(bits: int, group: int, sym: bool) -> TensorStorage:
    """``bits`` per weight, an fp16 scale per group and, unless ``sym``, an fp16 zero point."""
    return TensorStorage(
        value_bits=bits, group_size=group, scale_bits=16, zero_bits=0 if sym else 16
    )
