"""NF4 and FP4: QLoRA's 4-bit data types (Dettmers, Pagnoni, Holtzman, Zettlemoyer;
NeurIPS 2023, arXiv:2305.14314).

Blockwise absmax quantization: the weights, flattened, fall in blocks of 64; each
block is divided by its absolute maximum and every value is replaced by the nearest
of 16 code values (the midpoints between sorted codes decide, as bitsandbytes'
``quantize_4bit`` does). NF4's codes are quantiles of N(0, 1) with an exact zero
(the paper's Appendix E); FP4 is bitsandbytes' e2m1 float (magnitudes 0, 0.0625,
2, 3, 4, 6, 8, 12, divided by 12). ``double_quant`` quantizes the fp32 block
absmaxes again, as published: their mean is subtracted and they are quantized
with 8-bit dynamic codes in blocks of 256, each with an fp32 scale.

Storage: 4 bits per weight; per block of 64 an fp32 absmax (32 bits) or, with
``double_quant``, an 8-bit code plus one fp32 scale per 256 blocks and the fp32
mean: 0.5 → 0.127 bits per weight of constants, as in the paper.
"""

from __future__ import annotations

import math

import torch

from mpt_core.engine.layerwise import block_linears
from mpt_core.quant import backends
from mpt_core.registry import Option, flag, register
from mpt_core.storage import TensorStorage

BLOCKSIZE = 64
BLOCKSIZE2 = 256  # second-level blocks of absmaxes (double quantization)
FP32_BITS = 32
CODE2_BITS = 8

NF4_CODE = (
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
)
# e2m1 with bitsandbytes' exponent bias: 0 and a subnormal, then 2, 3, 4, 6, 8, 12
FP4_MAGNITUDES = (0.0, 0.0625, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0)


def codebook(quant_type: str, device: torch.device | str) -> torch.Tensor:
    """The 16 code values of ``nf4`` or ``fp4`` in [-1, 1], sorted, on ``device`` (the
    weights' device: ``bucketize`` and the code lookup need them together)."""
    if quant_type == "nf4":
        return torch.tensor(NF4_CODE, dtype=torch.float32, device=device)
    magnitudes = torch.tensor(FP4_MAGNITUDES, dtype=torch.float32, device=device)
    code = torch.cat([magnitudes, -magnitudes])
    return torch.sort(code / code.abs().max()).values


def dynamic_code(device: torch.device | str) -> torch.Tensor:
    """The signed 8-bit dynamic (tree) data type of 8-bit optimizers (Dettmers et al., 2022),
    bitsandbytes' ``create_dynamic_map``: a sign, a run of zeros that sets the decimal
    exponent (10⁻⁶ … 10⁰), an indicator bit, and a linear fraction in the remaining bits.
    Its values are worked out on the host, as bitsandbytes does, and returned on ``device``."""
    exponent_bits, non_sign_bits = 7, 7
    data: list[float] = []
    for i in range(exponent_bits):
        fraction_items = 2 ** (i + non_sign_bits - exponent_bits) + 1
        boundaries = torch.linspace(0.1, 1, fraction_items, dtype=torch.float32, device="cpu")
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        data += ((10 ** (-(exponent_bits - 1) + i)) * means).tolist()
        data += (-(10 ** (-(exponent_bits - 1) + i)) * means).tolist()
    data += [0.0, 1.0]
    data += [0.0] * (256 - len(data))
    data.sort()
    return torch.tensor(data, dtype=torch.float32, device=device)


def blockwise_absmax_quantize(
    flat: torch.Tensor, code: torch.Tensor, blocksize: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(code indices, per-block absmax) of a flat fp32 tensor; the last block may be short."""
    n = flat.numel()
    blocks = math.ceil(n / blocksize)
    padded = torch.nn.functional.pad(flat, (0, blocks * blocksize - n)).reshape(blocks, blocksize)
    absmax = padded.abs().max(dim=1).values
    # multiply by the reciprocal (not divide) so that rounding matches bitsandbytes bit for bit
    scaled = torch.clamp(padded * (1.0 / absmax.clamp(min=1e-38)).view(-1, 1), -1, 1)
    midpoints = (code[:-1] + code[1:]) / 2
    index = torch.bucketize(scaled.reshape(-1)[:n], midpoints)
    return index, absmax


def blockwise_dequantize(
    index: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, blocksize: int
) -> torch.Tensor:
    n = index.numel()
    values = code[index]
    blocks = absmax.repeat_interleave(blocksize)[:n]
    return values * blocks


def double_quantize(absmax: torch.Tensor) -> torch.Tensor:
    """The block absmaxes as double quantization stores them, dequantized: the mean plus
    8-bit dynamic codes scaled per block of 256."""
    offset = absmax.mean()
    code = dynamic_code(absmax.device)
    index, absmax2 = blockwise_absmax_quantize(absmax - offset, code, BLOCKSIZE2)
    return blockwise_dequantize(index, absmax2, code, BLOCKSIZE2) + offset


def quantize_4bit(weight: torch.Tensor, quant_type: str, double_quant: bool) -> torch.Tensor:
    """``weight`` quantized to NF4/FP4 in blocks of 64, returned dequantized."""
    code = codebook(quant_type, weight.device)
    index, absmax = blockwise_absmax_quantize(weight.detach().float().reshape(-1), code, BLOCKSIZE)
    if double_quant:
        absmax = double_quantize(absmax)
    return blockwise_dequantize(index, absmax, code, BLOCKSIZE).reshape(weight.shape)


def storage_4bit(numel: int, double_quant: bool) -> TensorStorage:
    """4-bit codes, and the block constants QLoRA stores (a short last block counted too)."""
    blocks = math.ceil(numel / BLOCKSIZE)
    short_block = blocks - numel // BLOCKSIZE
    if not double_quant:
        return TensorStorage(
            value_bits=4,
            group_size=BLOCKSIZE,
            scale_bits=FP32_BITS,
            extra_bits=short_block * FP32_BITS,
        )
    second_level = math.ceil(blocks / BLOCKSIZE2) * FP32_BITS + FP32_BITS  # scales + the mean
    return TensorStorage(
        value_bits=4,
        group_size=BLOCKSIZE,
        scale_bits=CODE2_BITS,
        extra_bits=short_block * CODE2_BITS + second_level,
    )


OPTIONS = {
    "double_quant": Option(flag, False, "quantize the block absmaxes to 8 bits (QLoRA's DQ)"),
}


@torch.no_grad()
def apply_4bit(model, quant_type: str, settings: dict) -> dict[str, TensorStorage]:
    storage = {}
    for site, linear in block_linears(model):
        weight = linear.weight
        weight.copy_(quantize_4bit(weight, quant_type, settings["double_quant"]))
        storage[site.weight] = storage_4bit(weight.numel(), settings["double_quant"])
    return storage


@register(
    "nf4",
    family="quant",
    levels={"none"},
    options=OPTIONS | {"backend": Option(backends.parser("nf4"), "mpt", "mpt or bitsandbytes")},
)
def nf4(model, stage, settings, calibration) -> dict[str, TensorStorage]:
    if settings["backend"] != "mpt":
        return backends.run("nf4", model, stage, settings, calibration)
    return apply_4bit(model, "nf4", settings)


@register(
    "fp4",
    family="quant",
    levels={"none"},
    options=OPTIONS | {"backend": Option(backends.parser("fp4"), "mpt", "mpt or bitsandbytes")},
)
def fp4(model, stage, settings, calibration) -> dict[str, TensorStorage]:
    if settings["backend"] != "mpt":
        return backends.run("fp4", model, stage, settings, calibration)
    return apply_4bit(model, "fp4", settings)
