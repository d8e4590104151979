"""LLM.int8(): outlier columns, the mixed-precision decomposition, vector-wise int8,
footprint of stored outlier columns, the bitsandbytes backend, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mpt_core.errors import SpecError
from mpt_core.models import state_dict_hash
from mpt_core.pipeline import Calibration, compress
from mpt_core.quant.int8 import Int8Linear, outlier_columns, vectorwise_int8
from mpt_core.snapshot import Snapshot
from mpt_core.spec import Spec


def test_outlier_columns_are_exactly_those_reaching_the_threshold():
    x = torch.zeros(2, 3, 10)
    x[0, 1, 2] = 6.0  # reaches the threshold: outlier
    x[1, 2, 5] = -7.5  # negative: outlier
    x[0, 0, 7] = 5.999  # just below: not an outlier
    x[1, 0, 9] = 100.0
    assert outlier_columns(x, 6.0).tolist() == [2, 5, 9]


def test_vectorwise_int8_uses_one_absmax_per_row():
    x = torch.randn(4, 32)
    quantized = vectorwise_int8(x)
    step = x.abs().amax(dim=1, keepdim=True) / 127
    torch.testing.assert_close(quantized / step, (quantized / step).round(), atol=1e-4, rtol=0)
    assert (quantized - x).abs().le(step / 2 + 1e-6).all()
    assert torch.equal(vectorwise_int8(torch.zeros(2, 3)), torch.zeros(2, 3))


def test_decomposition_multiplies_outliers_in_16_bit():
    generator = torch.Generator().manual_seed(0)
    linear = nn.Linear(16, 8, bias=False)
    original = linear.weight.detach().clone()
    wrapped = Int8Linear.wrap(linear, torch.tensor([3]), 6.0, vectorwise_int8)
    x = torch.randn(5, 16, generator=generator)
    x[2, 3] = 40.0  # outlier in a stored column
    inliers = x.clone()
    inliers[:, 3] = 0
    expected = vectorwise_int8(inliers) @ vectorwise_int8(original).t()
    expected += x[:, [3]] @ original[:, [3]].t()  # the 16-bit product, exact weights
    torch.testing.assert_close(wrapped(x), expected)
    # without the decomposition a 40.0 would coarsen that token's int8 grid 10×
    plain = vectorwise_int8(x) @ vectorwise_int8(original).t()
    exact = x @ original.t()
    assert (wrapped(x) - exact).abs().max() < (plain - exact).abs().max()


def test_footprint_counts_stored_outlier_columns(fresh_tiny):
    """A low threshold makes the tiny model's calibration find outlier columns; each costs
    16-bit weights for every row and an int32 column index."""
    model = fresh_tiny.model
    snapshot, original = Snapshot(model), state_dict_hash(model)
    calibration = Calibration(fresh_tiny.tokenizer, 32)
    footprint = compress(model, Spec.parse("int8[threshold=0.5,nsamples=4]"), calibration)
    expected, outlier_bits = 0, 0
    for block in model.model.layers:
        for linear in block.modules():
            if isinstance(linear, Int8Linear):
                stored = (linear.outliers.weight != linear.weight).any(dim=0).sum().item()
                outlier_bits += stored * (16 * linear.out_features + 32)
                expected += 8 * linear.weight.numel() + 32 * linear.out_features
    assert outlier_bits > 0
    assert footprint.compressed_bits == expected + outlier_bits
    snapshot.restore(model)
    assert state_dict_hash(model) == original
    assert type(model.model.layers[0].self_attn.q_proj) is nn.Linear


def test_bitsandbytes_weights_are_the_in_tree_weights():
    pytest.importorskip("bitsandbytes")
    from mpt_core.quant.backends.bitsandbytes import int8_rows

    weight = torch.randn(64, 96)
    torch.testing.assert_close(int8_rows(weight), vectorwise_int8(weight), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "text,message",
    [
        ("int8:4", "int8 does not take a 'bits' level"),
        ("int8[threshold=-1]", "option threshold=-1"),
        ("int8[backend=gptqmodel]", "must be one of mpt, bitsandbytes"),
    ],
)
def test_bad_input_is_one_clear_line(fresh_tiny, text, message):
    with pytest.raises(SpecError) as error:
        compress(fresh_tiny.model, Spec.parse(text), Calibration(fresh_tiny.tokenizer, 32))
    assert message in str(error.value)
    assert "\n" not in str(error.value)
