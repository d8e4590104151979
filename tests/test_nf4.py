"""NF4/FP4: the code books, identity with bitsandbytes, double quantization, footprint, errors."""

from __future__ import annotations

import pytest
import torch

from mpt_core.errors import SpecError
from mpt_core.pipeline import compress
from mpt_core.quant.nf4 import (
    BLOCKSIZE2,
    codebook,
    double_quantize,
    dynamic_code,
    quantize_4bit,
)
from mpt_core.spec import Spec


def weights(shape=(576, 576), seed=0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    weight = 0.05 * torch.randn(shape, generator=generator)
    weight[3, :64] = 0  # an all-zero block
    return weight


def test_code_books():
    nf4 = codebook("nf4", "cpu")
    assert nf4.numel() == 16 and nf4[0] == -1 and nf4[-1] == 1 and 0.0 in nf4
    # NF4 has 8 positive and 7 negative values around an exact zero (the paper's §3)
    assert (nf4 > 0).sum() == 8 and (nf4 < 0).sum() == 7
    fp4 = codebook("fp4", "cpu")
    assert torch.equal(fp4[8:], torch.tensor([0, 0.0625, 2, 3, 4, 6, 8, 12]) / 12)
    code8 = dynamic_code("cpu")
    assert code8.numel() == 256 and code8.max() == 1 and torch.all(code8[1:] >= code8[:-1])


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_values_are_code_values_times_block_absmax(quant_type):
    weight = weights((64, 128))
    quantized = quantize_4bit(weight, quant_type, double_quant=False).reshape(-1, 64)
    absmax = weight.reshape(-1, 64).abs().amax(dim=1, keepdim=True)
    on_grid = quantized[absmax.flatten() > 0] / absmax[absmax.flatten() > 0]
    nearest = (on_grid.unsqueeze(-1) - codebook(quant_type, "cpu")).abs().amin(dim=-1)
    assert nearest.max() < 1e-6


@pytest.mark.parametrize("shape", [(576, 576), (1536, 576), (100, 37)])
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_identical_to_bitsandbytes(quant_type, shape):
    pytest.importorskip("bitsandbytes")
    from mpt_core.quant.backends.bitsandbytes import dequantized_4bit

    weight = weights(shape)
    ours = quantize_4bit(weight, quant_type, double_quant=False)
    assert torch.equal(ours, dequantized_4bit(weight, quant_type, double_quant=False))


def lut_rounding(code: torch.Tensor, x: torch.Tensor, blocksize: int) -> torch.Tensor:
    """bitsandbytes' CPU ``quantize_blockwise``: the 8-bit code index read from a table of
    65,536 bins over [-1, 1] instead of the nearest code (its C kernel), dequantized."""
    blocks = -(-x.numel() // blocksize)
    padded = torch.nn.functional.pad(x, (0, blocks * blocksize - x.numel())).reshape(blocks, -1)
    absmax = padded.abs().amax(dim=1)
    scaled = (padded * (1.0 / absmax).view(-1, 1)).reshape(-1)[: x.numel()]
    bins = -1.0 + (2.0 * torch.arange(65536, dtype=torch.float32)) / 65535
    table = torch.searchsorted(0.5 * (code[:-1] + code[1:]), bins)
    index = table[((scaled.clamp(-1, 1) + 1.0) * 0.5 * 65535 + 0.5).long()]
    return code[index] * absmax.repeat_interleave(blocksize)[: x.numel()]


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_double_quantization_matches_bitsandbytes_up_to_its_cpu_rounding(quant_type):
    """Same layout as bitsandbytes (mean removed, 8-bit dynamic codes in blocks of 256,
    fp32 scale per block). mpt rounds to the nearest code as the paper and the CUDA kernel
    do; bitsandbytes' CPU kernel reads a 65,536-bin table, which picks the neighbouring
    code for a few values near a midpoint. With that rounding the result is identical."""
    bnb = pytest.importorskip("bitsandbytes.functional")
    weight = weights()
    packed, state = bnb.quantize_4bit(
        weight, blocksize=64, compress_statistics=True, quant_type=quant_type
    )
    theirs_absmax = bnb.dequantize_blockwise(state.absmax, state.state2) + state.offset
    absmax = weight.reshape(-1, 64).abs().amax(dim=1)
    ours_absmax = double_quantize(absmax)
    offset = absmax.mean()
    assert torch.equal(
        lut_rounding(dynamic_code("cpu"), absmax - offset, BLOCKSIZE2) + offset, theirs_absmax
    )
    differ = (ours_absmax != theirs_absmax).float().mean().item()
    assert differ < 0.01
    # the 4-bit codes themselves are the same: identical wherever the absmaxes agree
    theirs = bnb.dequantize_4bit(packed, state).reshape(-1, 64)
    ours = quantize_4bit(weight, quant_type, double_quant=True).reshape(-1, 64)
    same = ours_absmax == theirs_absmax
    assert torch.equal(ours[same], theirs[same])


@pytest.mark.parametrize(
    "text,bits_per_weight",
    [
        ("nf4", 4 + 32 / 64),
        ("fp4", 4 + 32 / 64),
        # QLoRA's double quantization: 8/64 + 32/(64·256) ≈ 0.127 bits of constants, plus
        # the fp32 mean and short last second-level blocks on these small tensors
        ("nf4[double_quant]", None),
    ],
)
def test_footprint_counts_codes_and_block_constants(fresh_tiny, text, bits_per_weight):
    footprint = compress(fresh_tiny.model, Spec.parse(text), None)
    if bits_per_weight is not None:
        assert footprint.bits_per_weight == pytest.approx(bits_per_weight)
        return
    expected_bits = 0
    for tensor in footprint.tensors:
        if "layers" in tensor.name and tensor.name.endswith("proj.weight"):
            blocks = tensor.numel // 64
            expected_bits += 4 * tensor.numel + 8 * blocks + 32 * (-(-blocks // 256) + 1)
    assert footprint.compressed_bits == expected_bits
    assert 4.127 < footprint.bits_per_weight < 4.2


def test_bitsandbytes_backend_gives_the_same_model(fresh_tiny, tiny):
    pytest.importorskip("bitsandbytes")
    compress(fresh_tiny.model, Spec.parse("nf4[backend=bitsandbytes]"), None)
    ours = type(tiny.model)(tiny.model.config)
    ours.load_state_dict(tiny.model.state_dict())
    compress(ours, Spec.parse("nf4"), None)
    for (name, a), (_, b) in zip(
        ours.state_dict().items(), fresh_tiny.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


@pytest.mark.parametrize(
    "text,message",
    [
        ("nf4:4", "nf4 does not take a 'bits' level"),
        ("fp4:0.5", "fp4 does not take a 'ratio' level"),
        ("nf4[backend=gptqmodel]", "must be one of mpt, bitsandbytes"),
        ("nf4[group=32]", "unknown option 'group' for nf4"),
    ],
)
def test_bad_input_is_one_clear_line(fresh_tiny, text, message):
    with pytest.raises(SpecError) as error:
        compress(fresh_tiny.model, Spec.parse(text), None)
    assert message in str(error.value)
    assert "\n" not in str(error.value)
