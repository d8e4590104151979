"""bitsandbytes as a backend: NF4/FP4 through ``quantize_4bit``/``dequantize_4bit`` and
LLM.int8() through ``int8_vectorwise_quant`` (CPU-capable since bitsandbytes 0.45).

The weights bitsandbytes produces are written back dequantized, so evaluation runs the
same torch model as the in-tree reference; the storage counted is the layout
bitsandbytes keeps (``Params4bit`` with its ``QuantState``; ``Int8Params`` with its
row statistics ``SCB``).
"""

from __future__ import annotations

import torch

from mpt_core.engine.layerwise import block_linears
from mpt_core.quant.backends import require
from mpt_core.storage import TensorStorage

BLOCKSIZE = 64


def apply(method: str, model, stage, settings: dict, calibration) -> dict[str, TensorStorage]:
    require("bitsandbytes")
    if method in ("nf4", "fp4"):
        return _apply_4bit(model, method, settings["double_quant"])
    from mpt_core.quant.int8 import apply_int8

    return apply_int8(model, settings, calibration, quantize_rows=int8_rows)


@torch.no_grad()
def dequantized_4bit(weight: torch.Tensor, quant_type: str, double_quant: bool) -> torch.Tensor:
    """bitsandbytes' own round trip of ``weight`` through its 4-bit storage."""
    import bitsandbytes.functional as F

    packed, state = F.quantize_4bit(
        weight.detach().float(),
        blocksize=BLOCKSIZE,
        compress_statistics=double_quant,
        quant_type=quant_type,
    )
    return F.dequantize_4bit(packed, state).reshape(weight.shape)


@torch.no_grad()
def int8_rows(weight: torch.Tensor) -> torch.Tensor:
    """bitsandbytes' vector-wise int8 round trip (per output row absmax, 127 levels)."""
    import bitsandbytes.functional as F

    codes, row_stats, _ = F.int8_vectorwise_quant(weight.detach().float().contiguous())
    return F.int8_vectorwise_dequant(codes, row_stats)


@torch.no_grad()
def _apply_4bit(model, quant_type: str, double_quant: bool) -> dict[str, TensorStorage]:
    from mpt_core.quant.nf4 import storage_4bit

    storage = {}
    for site, linear in block_linears(model):
        weight = linear.weight
        weight.copy_(dequantized_4bit(weight, quant_type, double_quant))
        storage[site.weight] = storage_4bit(weight.numel(), double_quant)
    return storage
