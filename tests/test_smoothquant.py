"""SmoothQuant: the migration equation, float outputs unchanged by it, W8A8 fake quantization,
snapshot restore of the wrapped linears, footprint, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mpt_core.errors import SpecError
from mpt_core.models import state_dict_hash
from mpt_core.pipeline import Calibration, compress
from mpt_core.quant.activations import input_absmax
from mpt_core.quant.smoothquant import (
    W8A8Linear,
    absmax_fake_quant,
    smooth_block,
    smooth_ln_fcs,
)
from mpt_core.snapshot import Snapshot
from mpt_core.spec import Spec

IDS = torch.arange(2, 2 + 96).reshape(3, 32)


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS, use_cache=False).logits


def test_scales_balance_activation_and_weight_ranges():
    """With α = 0.5, max|X_j / s_j| = max|W_j · s_j| = sqrt(max|X_j| · max|W_j|)."""
    generator = torch.Generator().manual_seed(0)
    norm = nn.RMSNorm(32)
    fcs = [nn.Linear(32, 16, bias=False), nn.Linear(32, 24, bias=False)]
    x_max = torch.rand(32, generator=generator) * 10 + 0.1
    w_max = torch.stack([fc.weight.abs().amax(dim=0) for fc in fcs]).amax(dim=0)
    smooth_ln_fcs(norm, fcs, x_max, alpha=0.5)
    scales = 1 / norm.weight.detach()
    new_w_max = torch.stack([fc.weight.abs().amax(dim=0) for fc in fcs]).amax(dim=0)
    torch.testing.assert_close(x_max / scales, (x_max * w_max).sqrt())
    torch.testing.assert_close(new_w_max.detach(), (x_max * w_max).sqrt())


def test_migration_leaves_the_float_model_unchanged(fresh_tiny):
    model = fresh_tiny.model
    before = logits(model)
    windows = Calibration(fresh_tiny.tokenizer, 32).windows(
        {"calib": None, "nsamples": 4, "seed": 0}
    )
    scales = input_absmax(model, windows)
    for index, block in enumerate(model.model.layers):
        smooth_block(block, scales[index], alpha=0.5)
    assert not torch.equal(model.model.layers[0].input_layernorm.weight, torch.ones(64))
    torch.testing.assert_close(logits(model), before, atol=1e-4, rtol=1e-4)


def test_activations_are_quantized_per_token_on_every_call():
    linear = nn.Linear(16, 8, bias=False)
    original = linear.weight.detach().clone()
    wrapped = W8A8Linear.wrap(linear, bits=8)
    # weights: per output channel, 255 symmetric levels of absmax / 127
    step = original.abs().amax(dim=1, keepdim=True) / 127
    torch.testing.assert_close(wrapped.weight / step, (wrapped.weight / step).round())
    x = torch.randn(2, 5, 16)
    x[0, 0] *= 100  # one loud token does not coarsen the grid of the others
    expected = absmax_fake_quant(x, 8) @ wrapped.weight.t()
    torch.testing.assert_close(wrapped(x), expected)
    token_step = x[1, 2].abs().max() / 127
    quantized = absmax_fake_quant(x, 8)[1, 2] / token_step
    torch.testing.assert_close(quantized, quantized.round(), atol=1e-4, rtol=0)


def test_w8a8_model_restores_exactly(fresh_tiny):
    model = fresh_tiny.model
    original, before = state_dict_hash(model), logits(model)
    snapshot = Snapshot(model)
    footprint = compress(
        model, Spec.parse("smoothquant:8[nsamples=4]"), Calibration(fresh_tiny.tokenizer, 32)
    )
    assert isinstance(model.model.layers[1].mlp.down_proj, W8A8Linear)
    after = logits(model)
    assert not torch.equal(after, before)
    torch.testing.assert_close(after, before, atol=5e-2, rtol=0)
    # 8-bit weights and one fp16 scale per output channel (per row of in_features weights)
    rows = sum(
        m.out_features for b in model.model.layers for m in b.modules() if isinstance(m, nn.Linear)
    )
    assert footprint.compressed_bits == 8 * footprint.compressed_numel + 16 * rows
    snapshot.restore(model)
    assert state_dict_hash(model) == original
    assert type(model.model.layers[1].mlp.down_proj) is nn.Linear
    assert torch.equal(logits(model), before)


@pytest.mark.parametrize(
    "text,message",
    [
        ("smoothquant:8[alpha=1.5]", "option alpha=1.5"),
        ("smoothquant", "smoothquant does not take a 'none' level"),
        ("smoothquant:8[backend=llmcompressor]", "backend llmcompressor not installed"),
    ],
)
def test_bad_input_is_one_clear_line(fresh_tiny, text, message):
    with pytest.raises(SpecError) as error:
        compress(fresh_tiny.model, Spec.parse(text), Calibration(fresh_tiny.tokenizer, 32))
    assert message in str(error.value)
    assert "\n" not in str(error.value)
