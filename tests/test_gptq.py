"""GPTQ: Hessian accumulation, the lazy-batch sweep, act_order, static groups, footprint, errors."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from mpt_core.errors import SpecError
from mpt_core.pipeline import Calibration, compress
from mpt_core.quant.gptq import GPTQ
from mpt_core.quant.grid import find_grid
from mpt_core.quant.rtn import quantize_groups
from mpt_core.snapshot import Snapshot
from mpt_core.spec import Spec


def correlated_layer(rows=48, columns=128, tokens=2048, seed=0):
    """A random layer and inputs whose features are strongly correlated (as in LLMs)."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, columns, generator=generator)
    mixing = torch.randn(16, columns, generator=generator)
    x = torch.randn(tokens, 16, generator=generator) @ mixing
    x = x + 0.1 * torch.randn(tokens, columns, generator=generator)
    return torch.nn.Linear(columns, rows, bias=False), weight, x


def hessian_of(linear, x, batches=4) -> GPTQ:
    stats = GPTQ(linear)
    for part in x.reshape(batches, -1, x.shape[-1]):
        stats.add_batch(part.unsqueeze(0))
    return stats


def output_error(weight, quantized, x) -> float:
    return torch.linalg.norm((weight - quantized) @ x.t()).item()


def test_hessian_is_2_over_n_sum_of_outer_products():
    linear, _, x = correlated_layer()
    stats = hessian_of(linear, x, batches=4)
    # four sequences of 512 tokens: n counts sequences, as the reference does
    torch.testing.assert_close(stats.H, 2 * x.t() @ x / 4, rtol=1e-4, atol=1e-3)


def test_fine_grid_is_nearly_identity():
    linear, weight, x = correlated_layer()
    quantized = hessian_of(linear, x).fasterquant(weight, bits=16, sym=False, groupsize=32)
    assert (quantized - weight).abs().max() < 1e-3


@pytest.mark.parametrize("bits,group", [(4, None), (3, 32), (2, 64)])
def test_layer_output_error_below_rtn(bits, group):
    linear, weight, x = correlated_layer()
    gptq = hessian_of(linear, x).fasterquant(weight, bits, sym=False, groupsize=group)
    rtn = quantize_groups(weight, bits, group or weight.shape[1], sym=False)
    assert output_error(weight, gptq, x) < 0.8 * output_error(weight, rtn, x)


def test_act_order_undoes_its_permutation():
    linear, weight, x = correlated_layer()
    stats = hessian_of(linear, x)
    perm = torch.argsort(torch.diag(stats.H), descending=True)
    permuted = GPTQ(linear)
    permuted.H = stats.H[perm][:, perm].clone()
    expected = permuted.fasterquant(weight[:, perm], 3, sym=False)[:, torch.argsort(perm)]
    assert torch.equal(stats.fasterquant(weight, 3, sym=False, actorder=True), expected)
    fine = hessian_of(linear, x).fasterquant(weight, 16, sym=False, actorder=True)
    assert (fine - weight).abs().max() < 1e-3


def test_static_groups_use_the_grids_of_the_original_weights():
    linear, weight, x = correlated_layer()
    quantized = hessian_of(linear, x).fasterquant(
        weight, 3, sym=False, groupsize=32, actorder=True, static_groups=True
    )
    for start in range(0, weight.shape[1], 32):
        grid = find_grid(weight[:, start : start + 32], 3, sym=False)
        levels = quantized[:, start : start + 32] / grid.scale + grid.zero
        torch.testing.assert_close(levels, levels.round(), atol=1e-3, rtol=0)


def test_dead_inputs_are_zeroed():
    linear, weight, x = correlated_layer()
    x[:, 7] = 0
    quantized = hessian_of(linear, x).fasterquant(weight, 4, sym=False)
    assert torch.all(quantized[:, 7] == 0)


def test_footprint_counts_values_scales_zeros_and_group_index(fresh_tiny):
    model = fresh_tiny.model
    calibration = Calibration(fresh_tiny.tokenizer, 32)
    plain = compress(model, Spec.parse("gptq:4[group=32,nsamples=4]"), calibration)
    # 4-bit values, an fp16 scale and an fp16 zero per group of 32
    assert plain.bits_per_weight == pytest.approx(4 + 32 / 32)
    ordered = compress(model, Spec.parse("gptq:4[group=32,act_order,nsamples=4]"), calibration)
    # act_order with dynamic groups adds GPTQ's g_idx: an int32 per input column
    g_idx_bits = sum(
        32 * linear.in_features
        for block in model.model.layers
        for linear in block.modules()
        if isinstance(linear, torch.nn.Linear)
    )
    expected = 5 + g_idx_bits / ordered.compressed_numel
    assert ordered.bits_per_weight == pytest.approx(expected)


def test_quantized_model_stays_close_and_restores(fresh_tiny):
    model = fresh_tiny.model
    ids = torch.arange(2, 66).reshape(2, 32)
    with torch.no_grad():
        before = model(ids).logits
    snapshot = Snapshot(model)
    compress(
        model, Spec.parse("gptq:8[group=32,nsamples=4]"), Calibration(fresh_tiny.tokenizer, 32)
    )
    with torch.no_grad():
        after = model(ids).logits
    assert not torch.equal(before, after)
    torch.testing.assert_close(after, before, atol=2e-2, rtol=0)
    snapshot.restore(model)


@pytest.mark.parametrize(
    "text,message",
    [
        ("gptq:4[group=48]", "group=48 does not divide the input width 64"),
        ("gptq:4[damp=2]", "option damp=2"),
        ("gptq:4[backend=gptqmodel]", "backend gptqmodel not installed"),
        ("gptq:4[backend=llmcompressor]", "backend llmcompressor not installed"),
        ("gptq:4[backend=auto-gptq]", "use backend=gptqmodel"),
        ("gptq:4[backend=exllama]", "must be one of mpt, gptqmodel, llmcompressor, auto-gptq"),
        ("gptq", "gptq does not take a 'none' level"),
    ],
)
def test_bad_input_is_one_clear_line(fresh_tiny, text, message):
    if "not installed" in message and importlib.util.find_spec(message.split()[1]):
        pytest.skip(f"{message.split()[1]} is installed here")
    calibration = Calibration(fresh_tiny.tokenizer, 32)
    with pytest.raises(SpecError) as error:
        compress(fresh_tiny.model, Spec.parse(text), calibration)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_bits_above_8_are_a_grammar_error():
    with pytest.raises(SpecError):
        Spec.parse("gptq:9")
