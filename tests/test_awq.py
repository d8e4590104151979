"""AWQ: llm-awq's grid, the scale search beats plain rounding on salient channels, scales
folded into the previous op leave the float model unchanged, the clip search, footprint,
errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from mpt_core.errors import SpecError
from mpt_core.pipeline import Calibration, compress
from mpt_core.quant.awq import (
    apply_scale,
    auto_clip_layer,
    group_products,
    pseudo_quantize_tensor,
    search_module_scale,
)
from mpt_core.spec import Spec


def salient_layer(seed=0):
    """A linear whose inputs have a few channels 30× louder than the rest (AWQ's setting)."""
    generator = torch.Generator().manual_seed(seed)
    linear = nn.Linear(64, 32, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(32, 64, generator=generator) * 0.05)
    x = torch.randn(4, 128, 64, generator=generator)
    x[..., :4] *= 30
    return linear, x


def test_grid_is_llm_awq_min_max_with_clamped_zero():
    w = torch.tensor([[0.5, 1.0, 1.5, 2.0], [-3.0, -1.0, 0.0, 1.0]])
    quantized = pseudo_quantize_tensor(w, bits=2, group=4)
    # scale (max - min) / 3 = 0.5 and zero -round(min / scale) = -1, clamped to 0: an
    # all-positive group loses its top level, as in llm-awq (GPTQ's grid would widen to 0)
    torch.testing.assert_close(quantized[0], torch.tensor([0.5, 1.0, 1.5, 1.5]))
    # scale 4/3, zero 2: levels -8/3, -4/3, 0, 4/3
    torch.testing.assert_close(quantized[1], torch.tensor([-8 / 3, -4 / 3, 0.0, 4 / 3]))


def test_scale_search_beats_plain_rounding_on_salient_channels():
    linear, x = salient_layer()
    original = linear.weight.detach().clone()
    exact = x @ original.t()
    plain = x @ pseudo_quantize_tensor(original, 3, 32).t()
    scales = search_module_scale(linear, [linear], x, {}, bits=3, group=32)
    assert torch.equal(linear.weight, original)  # the search leaves the weights as found
    scaled = pseudo_quantize_tensor(original * scales, 3, 32) / scales
    searched = x @ scaled.t()
    assert (searched - exact).pow(2).mean() < 0.9 * (plain - exact).pow(2).mean()
    # salient channels get the larger scales
    assert scales[:4].min() > scales[4:].max()


def test_folded_scales_leave_the_float_output_unchanged():
    generator = torch.Generator().manual_seed(1)
    norm, fc = nn.RMSNorm(64), nn.Linear(64, 32, bias=False)
    up, down = nn.Linear(64, 48, bias=False), nn.Linear(48, 16, bias=False)
    x = torch.randn(3, 64, generator=generator)
    before = (fc(norm(x)), down(up(x)))
    apply_scale(norm, [fc], torch.rand(64, generator=generator) + 0.5)
    apply_scale(up, [down], torch.rand(48, generator=generator) + 0.5)
    torch.testing.assert_close(fc(norm(x)), before[0])
    torch.testing.assert_close(down(up(x)), before[1])


def test_clip_search_never_widens_and_does_not_hurt_any_group():
    linear, x = salient_layer(seed=2)
    w = linear.weight.detach()
    max_val = auto_clip_layer(w, x, bits=3, group=32)
    org_max = w.reshape(32, -1, 32).abs().amax(dim=-1, keepdim=True)
    assert (max_val <= org_max).all() and (max_val >= 0.5 * org_max).all()
    clipped = w.reshape(32, -1, 32).clamp(-max_val, max_val).reshape(w.shape)
    x_groups = x.reshape(-1, 2, 32)

    def group_errors(quantized):  # (rows, groups): error of each group's partial product
        delta = (quantized - w).reshape(32, 2, 32)
        return torch.einsum("tgc,rgc->trg", x_groups, delta).pow(2).mean(dim=0)

    clipped_errors = group_errors(pseudo_quantize_tensor(clipped, 3, 32))
    assert (clipped_errors <= group_errors(pseudo_quantize_tensor(w, 3, 32)) * 1.0001).all()


@given(
    st.integers(1, 9), st.integers(1, 40), st.integers(1, 5), st.integers(1, 33), st.integers(0, 99)
)
def test_group_products_are_llm_awqs_broadcast_sum(rows, tokens, groups, group, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(1, tokens, groups, group, generator=generator)
    w = torch.randn(rows, 1, groups, group, generator=generator)
    expected = (x * w).sum(dim=-1)
    assert torch.allclose(group_products(x, w), expected, rtol=1e-5, atol=1e-5)


def test_model_quantized_with_group_storage(fresh_tiny):
    model = fresh_tiny.model
    ids = torch.arange(2, 66).reshape(2, 32)
    with torch.no_grad():
        before = model(ids).logits
    footprint = compress(
        model, Spec.parse("awq:8[group=32,nsamples=2]"), Calibration(fresh_tiny.tokenizer, 32)
    )
    # 8-bit values, an fp16 scale and an fp16 zero per group of 32
    assert footprint.bits_per_weight == pytest.approx(8 + 32 / 32)
    with torch.no_grad():
        after = model(ids).logits
    assert not torch.equal(after, before)
    torch.testing.assert_close(after, before, atol=2e-2, rtol=0)


@pytest.mark.parametrize(
    "text,message",
    [
        ("awq:4[group=48]", "group=48 does not divide the input width 64"),
        ("awq:4[backend=llmcompressor]", "backend llmcompressor not installed"),
        ("awq:4[backend=gptqmodel]", "must be one of mpt, llmcompressor"),
        ("awq", "awq does not take a 'none' level"),
    ],
)
def test_bad_input_is_one_clear_line(fresh_tiny, text, message):
    with pytest.raises(SpecError) as error:
        compress(fresh_tiny.model, Spec.parse(text), Calibration(fresh_tiny.tokenizer, 32))
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_bits_above_8_are_a_grammar_error():
    with pytest.raises(SpecError):
        Spec.parse("awq:9")
