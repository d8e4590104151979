"""Storage accounting: exact costs of the documented layouts, achieved sparsity, N:M masks."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import TINY_SHAPE
from mpt_core.engine.layerwise import block_linear_names
from mpt_core.pipeline import compress, merge_storage
from mpt_core.spec import Spec
from mpt_core.storage import TensorStorage, dense_numel, measure, tensor_cost

pytestmark = pytest.mark.usefixtures("one_thread")


def compressed_costs(footprint, model):
    names = set(block_linear_names(model))
    costs = [cost for cost in footprint.tensors if cost.name in names]
    assert {cost.name for cost in costs} == names
    return costs


def original_weights(model) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    return {name: params[name].detach().clone() for name in block_linear_names(model)}


# ----------------------------------------------------------------------------- RTN


@pytest.mark.parametrize(
    ("spec", "bits_per_weight"),
    [
        ("rtn:4[group=64]", 4 + 32 / 64),  # 4-bit values + fp16 scale and zero per 64
        ("rtn:4[group=64,sym]", 4 + 16 / 64),  # symmetric: scale only
        ("rtn:3[group=32]", 3 + 32 / 32),
        ("rtn:8[group=32,sym]", 8 + 16 / 32),
    ],
)
def test_rtn_group_footprint_is_exact(fresh_tiny, spec, bits_per_weight):
    model = fresh_tiny.model
    footprint = compress(model, Spec.parse(spec), None)
    costs = compressed_costs(footprint, model)
    numel = sum(cost.numel for cost in costs)
    fp16_bytes = 2 * numel
    compressed_bytes = sum(cost.bytes for cost in costs)
    assert compressed_bytes == bits_per_weight / 16 * fp16_bytes
    assert footprint.bits_per_weight == bits_per_weight
    assert footprint.compressed_numel == numel
    assert all(cost.layout == "dense" for cost in costs)
    # every other tensor stays fp16, and the total is the sum of the parts
    others = [cost for cost in footprint.tensors if cost not in costs]
    assert others and all(cost.bits == 16 * cost.numel for cost in others)
    assert footprint.bytes == compressed_bytes + sum(2 * cost.numel for cost in others)
    assert footprint.fp16_bytes == 2 * dense_numel(model)
    assert footprint.relative_size == footprint.bytes / footprint.fp16_bytes


def test_rtn_without_group_has_one_scale_and_zero_per_row(fresh_tiny):
    model = fresh_tiny.model
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    footprint = compress(model, Spec.parse("rtn:4"), None)
    for cost in compressed_costs(footprint, model):
        rows, cols = shapes[cost.name]
        assert cost.bits == rows * cols * 4 + rows * 32, cost.name


def test_rtn_values_lie_on_at_most_2_pow_bits_levels_per_group(fresh_tiny):
    model = fresh_tiny.model
    compress(model, Spec.parse("rtn:3[group=32]"), None)
    weight = model.model.layers[1].mlp.down_proj.weight.detach()
    groups = weight.reshape(-1, 32)
    levels = [torch.unique(group).numel() for group in groups]
    assert max(levels) <= 2**3
    assert max(levels) >= 6  # and the grid is actually used


# ------------------------------------------------------------------------ sparsity


@pytest.mark.parametrize("ratio", [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
def test_magnitude_achieved_sparsity_equals_ratio(fresh_tiny, ratio):
    model = fresh_tiny.model
    before = original_weights(model)
    footprint = compress(model, Spec.parse(f"magnitude:{ratio}"), None)
    assert footprint.sparsity == pytest.approx(ratio, abs=1e-3)
    params = dict(model.named_parameters())
    for name, original in before.items():
        pruned = params[name].detach() == 0
        assert int(pruned.sum()) == int(original.numel() * ratio), name
        # the pruned weights are the smallest in magnitude; the kept ones are untouched
        assert original[pruned].abs().max() <= original[~pruned].abs().min()
        assert torch.equal(params[name].detach()[~pruned], original[~pruned])


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.7])
def test_magnitude_row_scope_prunes_each_row_equally(fresh_tiny, ratio):
    model = fresh_tiny.model
    footprint = compress(model, Spec.parse(f"magnitude:{ratio}[scope=row]"), None)
    params = dict(model.named_parameters())
    shapes = [params[name].shape for name in block_linear_names(model)]
    expected = sum(rows * int(cols * ratio) for rows, cols in shapes)
    assert footprint.sparsity == expected / sum(rows * cols for rows, cols in shapes)
    for name in block_linear_names(model):
        weight = params[name].detach()
        zeros_per_row = (weight == 0).sum(dim=1)
        assert torch.all(zeros_per_row == int(weight.shape[1] * ratio)), name


@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 4), (4, 8), (3, 4)])
def test_nm_masks_are_valid_in_every_group(fresh_tiny, n, m):
    model = fresh_tiny.model
    before = original_weights(model)
    footprint = compress(model, Spec.parse(f"magnitude:{n}:{m}"), None)
    params = dict(model.named_parameters())
    costs = {cost.name: cost for cost in compressed_costs(footprint, model)}
    for name, original in before.items():
        weight = params[name].detach()
        rows, cols = weight.shape
        groups = weight.reshape(rows, cols // m, m)
        assert torch.all((groups == 0).sum(dim=2) == n), name
        # inside each group the pruned weights are the n smallest in magnitude
        original_groups = original.reshape(rows, cols // m, m).abs()
        pruned = groups == 0
        largest_pruned = original_groups.masked_fill(~pruned, -1).amax(dim=2)
        smallest_kept = original_groups.masked_fill(pruned, math.inf).amin(dim=2)
        assert torch.all(largest_pruned <= smallest_kept), name
        cost = costs[name]
        assert cost.layout == "nm"
        assert cost.nnz == weight.numel() * (m - n) // m
        assert cost.bits == cost.nnz * (16 + math.ceil(math.log2(m)))
    assert footprint.sparsity == n / m


def test_pruning_then_quantizing_counts_the_measured_zeros(fresh_tiny):
    model = fresh_tiny.model
    footprint = compress(model, Spec.parse("magnitude:0.5+rtn:4[group=64]"), None)
    params = dict(model.named_parameters())
    assert footprint.sparsity >= 0.5
    for cost in compressed_costs(footprint, model):
        weight = params[cost.name].detach()
        nnz = int(torch.count_nonzero(weight))
        assert cost.nnz == nnz
        scales = weight.numel() // 64 * 32
        assert cost.layout == "bitmask"
        assert cost.bits == nnz * 4 + weight.numel() + scales


# --------------------------------------------------------------------------- dense


def tied_tiny():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=258, tie_word_embeddings=True, **TINY_SHAPE)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def test_dense_footprint_is_16_bits_per_weight_with_tied_weights_once():
    model = tied_tiny()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    every = sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))
    unique = every - 258 * 64
    assert dense_numel(model) == unique

    for footprint in (measure(model, {}), compress(model, Spec(), None)):
        assert footprint.bytes == 2 * unique
        assert footprint.fp16_bytes == 2 * unique
        assert footprint.relative_size == 1.0
        assert footprint.bits_per_weight == 16.0
        assert footprint.sparsity == 0.0
        assert footprint.compressed_numel == 0
        names = [cost.name for cost in footprint.tensors]
        assert len(names) == len(set(names))
        assert ("lm_head.weight" in names) != ("model.embed_tokens.weight" in names)


def test_tied_weights_counted_once_in_a_compressed_model():
    model = tied_tiny()
    footprint = compress(model, Spec.parse("rtn:4[group=64]"), None)
    linears = set(block_linear_names(model))
    compressed = sum(c.numel for c in footprint.tensors if c.name in linears)
    rest = dense_numel(model) - compressed
    assert footprint.bytes == compressed * 4.5 / 8 + rest * 2


def test_untied_dense_model_counts_both_embedding_and_head(tiny):
    model = tiny.model
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    footprint = measure(model, {})
    every = sum(p.numel() for p in model.parameters())
    assert footprint.bytes == 2 * every and footprint.relative_size == 1.0


# ---------------------------------------------------------------- bitmask vs dense


def tensor_with_nnz(numel: int, nnz: int) -> torch.Tensor:
    tensor = torch.zeros(numel)
    tensor[torch.randperm(numel, generator=torch.Generator().manual_seed(0))[:nnz]] = 1.5
    return tensor.reshape(16, numel // 16)


@pytest.mark.parametrize(
    ("value_bits", "nnz", "layout"),
    [
        # bitmask costs nnz * bits + numel: cheaper than dense iff nnz < numel (bits-1)/bits
        (16, 960 - 1, "bitmask"),  # 1024 * 15/16 = 960
        (16, 960, "dense"),  # a tie keeps the dense layout
        (16, 1024, "dense"),
        (16, 0, "bitmask"),
        (4, 768 - 1, "bitmask"),  # 1024 * 3/4 = 768
        (4, 768, "dense"),
        (2, 511, "bitmask"),
        (2, 512, "dense"),
    ],
)
def test_bitmask_or_dense_whichever_is_cheaper(value_bits, nnz, layout):
    tensor = tensor_with_nnz(1024, nnz)
    cost = tensor_cost("w", tensor, TensorStorage(value_bits=value_bits, sparse=True))
    assert (cost.layout, cost.nnz, cost.numel) == (layout, nnz, 1024)
    dense, bitmask = 1024 * value_bits, nnz * value_bits + 1024
    assert cost.bits == min(dense, bitmask)


def test_bitmask_cost_adds_group_scales():
    tensor = tensor_with_nnz(1024, 256)
    storage = TensorStorage(value_bits=4, group_size=64, scale_bits=16, zero_bits=16, sparse=True)
    cost = tensor_cost("w", tensor, storage)
    assert cost.layout == "bitmask"
    assert cost.bits == 256 * 4 + 1024 + (1024 // 64) * 32


def test_zeros_of_a_tensor_no_pruning_stage_touched_are_stored_densely():
    """Rounding zeros do not make a quantized tensor sparse: its integers are stored dense."""
    tensor = tensor_with_nnz(1024, 256)
    storage = TensorStorage(value_bits=4, group_size=64, scale_bits=16, zero_bits=16)
    cost = tensor_cost("w", tensor, storage)
    assert (cost.layout, cost.nnz) == ("dense", 256)
    assert cost.bits == 1024 * 4 + (1024 // 64) * 32


def test_two_bit_rtn_stays_dense_despite_its_rounding_zeros(fresh_tiny):
    model = fresh_tiny.model
    footprint = compress(model, Spec.parse("rtn:2[group=32]"), None)
    assert footprint.sparsity > 0.25  # many small weights round to the zero point
    for cost in compressed_costs(footprint, model):
        assert cost.layout == "dense"
        assert cost.bits == cost.numel * 2 + cost.numel // 32 * 32


def test_untouched_tensor_is_fp16_whatever_its_zeros():
    cost = tensor_cost("w", tensor_with_nnz(1024, 10), None)
    assert (cost.layout, cost.bits) == ("fp16", 1024 * 16)


@pytest.mark.parametrize(("ratio", "layout"), [(0.05, "dense"), (0.5, "bitmask")])
def test_magnitude_layout_follows_the_cheaper_storage(fresh_tiny, ratio, layout):
    model = fresh_tiny.model
    footprint = compress(model, Spec.parse(f"magnitude:{ratio}"), None)
    for cost in compressed_costs(footprint, model):
        assert cost.layout == layout
        assert cost.bits == min(cost.numel * 16, cost.nnz * 16 + cost.numel)


def test_a_later_stage_keeps_the_sparse_layout_unless_its_format_stores_zeros():
    pruned = {"w": TensorStorage(sparse=True), "v": TensorStorage(nm=(2, 4))}
    quantized = {name: TensorStorage(value_bits=4) for name in pruned}
    file_format = {name: TensorStorage(value_bits=4, stores_zeros=True) for name in pruned}
    kept = merge_storage(pruned, quantized)
    assert kept["w"].sparse and kept["v"].nm == (2, 4)
    dense = merge_storage(pruned, file_format)
    assert not dense["w"].sparse and dense["v"].nm is None
