"""LLM-Pruner: Taylor importance |w·g| summed per coupled group, the least important groups
removed for real, the parameter ratio met within whole heads and channels."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from mpt_core import registry
from mpt_core.engine.layerwise import decoder_layers
from mpt_core.errors import SpecError
from mpt_core.models import state_dict_hash
from mpt_core.pipeline import compress
from mpt_core.prune.llm_pruner import (
    accumulate_gradients,
    channel_importance,
    head_group_importance,
    pruned_blocks,
    reference_count,
    survivors,
)
from mpt_core.prune.structure import block_shape, per_block_ratio, removed_params
from mpt_core.snapshot import Snapshot
from mpt_core.spec import Spec
from mpt_core.storage import dense_numel

pytestmark = pytest.mark.usefixtures("one_thread")

STUDY = Path(__file__).resolve().parents[1] / "baselines" / "study"


def small_llama(layers: int = 5, heads: int = 4, kv_heads: int = 2):
    """tiny-llama's widths (hidden 64, MLP 128, head_dim 16) with more blocks."""
    config = LlamaConfig(
        vocab_size=258,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=512,
    )
    torch.manual_seed(1)
    return LlamaForCausalLM(config).eval()


def logits_of(model) -> torch.Tensor:
    ids = torch.arange(2, 2 + 24).reshape(2, 12)
    with torch.no_grad():
        return model(ids, use_cache=False).logits


def set_random_grads(module: nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for linear in module.modules():
        if isinstance(linear, nn.Linear):
            linear.weight.grad = torch.randn(linear.weight.shape, generator=generator)


# The paper's importance


def test_head_group_importance_is_w_times_g_summed_over_the_group():
    """GQA (4 query heads, 2 key/value heads, head_dim 16): group g is query heads 2g and
    2g + 1 (q rows 32g … 32g + 31, o_proj columns alike) and key/value head g (k and v
    rows 16g … 16g + 15); its importance is Σ|w·g| over exactly those weights."""
    attention = small_llama(1).model.layers[0].self_attn
    set_random_grads(attention, seed=0)

    def salience(linear):
        return (linear.weight * linear.weight.grad).abs()

    expected = []
    for g in range(2):
        q_rows, kv_rows = slice(32 * g, 32 * g + 32), slice(16 * g, 16 * g + 16)
        total = salience(attention.q_proj)[q_rows].sum()
        total += salience(attention.k_proj)[kv_rows].sum()
        total += salience(attention.v_proj)[kv_rows].sum()
        total += salience(attention.o_proj)[:, q_rows].sum()
        expected.append(total)
    torch.testing.assert_close(head_group_importance(attention), torch.stack(expected))


def test_head_importance_without_gqa_is_one_head_per_group():
    attention = small_llama(1, heads=4, kv_heads=4).model.layers[0].self_attn
    set_random_grads(attention, seed=1)
    head = slice(16, 32)
    expected = (
        sum(
            (lin.weight * lin.weight.grad).abs()[head].sum()
            for lin in (attention.q_proj, attention.k_proj, attention.v_proj)
        )
        + (attention.o_proj.weight * attention.o_proj.weight.grad).abs()[:, head].sum()
    )
    assert head_group_importance(attention)[1].item() == pytest.approx(expected.item(), rel=1e-6)


def test_channel_importance_is_w_times_g_over_gate_up_rows_and_down_column():
    mlp = small_llama(1).model.layers[0].mlp
    set_random_grads(mlp, seed=2)
    expected = torch.stack(
        [
            (mlp.gate_proj.weight[i] * mlp.gate_proj.weight.grad[i]).abs().sum()
            + (mlp.up_proj.weight[i] * mlp.up_proj.weight.grad[i]).abs().sum()
            + (mlp.down_proj.weight[:, i] * mlp.down_proj.weight.grad[:, i]).abs().sum()
            for i in range(128)
        ]
    )
    torch.testing.assert_close(channel_importance(mlp), expected)


def test_gradients_are_those_of_the_mean_calibration_loss(fixed_calibration):
    """One window a pass, summed: the same ∂L/∂W as the whole batch's mean loss at once."""
    model = small_llama(3)
    windows = fixed_calibration(nsamples=4, seqlen=24, honour_nsamples=True).windows(
        {"nsamples": 4}
    )
    blocks = list(decoder_layers(model))[1:2]
    accumulate_gradients(model, blocks, windows)
    weight = blocks[0].mlp.down_proj.weight
    reference = copy.deepcopy(model)
    loss = reference(windows, labels=windows, use_cache=False).loss
    (expected,) = torch.autograd.grad(loss, reference.model.layers[1].mlp.down_proj.weight)
    torch.testing.assert_close(weight.grad, expected, rtol=1e-4, atol=1e-7)
    assert model.model.layers[0].mlp.down_proj.weight.grad is None
    assert all(p.requires_grad for p in model.parameters())


# Removal


def test_pruning_removes_the_least_important_groups_and_equals_zeroing_them(fixed_calibration):
    """The narrower model computes what the full model computes with the removed heads'
    o_proj columns and the removed channels' down_proj columns set to zero."""
    model = small_llama(4)
    calibration = fixed_calibration(nsamples=4, seqlen=24, honour_nsamples=True)
    windows = calibration.windows({"nsamples": 4})
    zeroed = copy.deepcopy(model)
    accumulate_gradients(zeroed, list(decoder_layers(zeroed)), windows)
    ratio = per_block_ratio(
        zeroed,
        list(decoder_layers(zeroed))[1:3],
        Spec.parse("llm_pruner:0.3").stages[0],
        reference_count,
    )
    expected_keep = {}
    with torch.no_grad():
        for index in (1, 2):
            block = zeroed.model.layers[index]
            shape = block_shape(block)
            heads = survivors(head_group_importance(block.self_attn), reference_count(2, 16, ratio))
            channels = survivors(channel_importance(block.mlp), reference_count(128, 1, ratio))
            expected_keep[index] = (heads, channels)
            gone_heads = sorted(set(range(shape.groups)) - set(heads.tolist()))
            for g in gone_heads:
                block.self_attn.o_proj.weight[:, 32 * g : 32 * g + 32] = 0
            gone = sorted(set(range(shape.channels)) - set(channels.tolist()))
            block.mlp.down_proj.weight[:, gone] = 0

    compress(model, Spec.parse("llm_pruner:0.3[nsamples=4,first=1,last=1]"), calibration)

    for index, (heads, channels) in expected_keep.items():
        widths = model.config.layer_widths[index]
        assert widths["num_key_value_heads"] == len(heads)
        assert widths["num_attention_heads"] == 2 * len(heads)
        assert widths["intermediate_size"] == len(channels)
    assert model.config.layer_widths[0]["intermediate_size"] == 128
    assert model.config.layer_widths[3]["intermediate_size"] == 128
    assert sum(len(h) for h, _ in expected_keep.values()) < 4  # a head group really went
    torch.testing.assert_close(logits_of(model), logits_of(zeroed), rtol=0, atol=1e-5)


def test_first_and_last_blocks_are_not_pruned(fixed_calibration):
    model = small_llama(6)
    untouched = [model.model.layers[i] for i in (0, 1, 5)]
    hashes = [state_dict_hash(block) for block in untouched]
    compress(
        model,
        Spec.parse("llm_pruner:0.3[nsamples=2,first=2,last=1]"),
        fixed_calibration(nsamples=4, seqlen=24, honour_nsamples=True),
    )
    assert [state_dict_hash(block) for block in untouched] == hashes
    assert [w["intermediate_size"] < 128 for w in model.config.layer_widths] == [
        False,
        False,
        True,
        True,
        True,
        False,
    ]


def test_a_too_shallow_model_is_pruned_in_every_block():
    model = small_llama(2)
    assert [index for index, _ in pruned_blocks(model, first=3, last=1)] == [0, 1]
    assert [index for index, _ in pruned_blocks(small_llama(6), first=3, last=1)] == [3, 4]


# The ratio


@pytest.mark.parametrize(
    ("units", "unit_size", "ratio", "removed"),
    [
        (11008, 1, 0.2, 2202),  # 11008 − int(8806.4)
        (32, 128, 0.25, 8),  # LLaMA-7B heads: 4096 − int(3072) = 1024 channels = 8 heads
        (3, 64, 0.25, 0),  # SmolLM2 key/value heads: 192 − int(144) = 48 channels < 1 head
        (3, 64, 0.34, 1),  # 192 − int(126.72) = 66 channels: 1 head
    ],
)
def test_removed_count_follows_metapruner(units, unit_size, ratio, removed):
    assert reference_count(units, unit_size, ratio) == removed


@pytest.mark.parametrize("ratio", [0.1, 0.2, 0.3, 0.45])
def test_achieved_reduction_is_the_nearest_to_r_that_whole_units_allow(ratio, fixed_calibration):
    """The removed parameter count is the one nearest R·N among all per-block ratios s,
    and the model really loses exactly that many parameters."""
    model = small_llama(6)
    total = dense_numel(model)
    blocks = [block for _, block in pruned_blocks(model, 1, 1)]
    shapes = [block_shape(block) for block in blocks]
    reachable = {removed_params(shapes, s, reference_count) for s in np.linspace(0, 1, 20001)}
    nearest = min(abs(count - ratio * total) for count in reachable)

    compress(
        model,
        Spec.parse(f"llm_pruner:{ratio}[nsamples=2,first=1,last=1]"),
        fixed_calibration(nsamples=4, seqlen=24, honour_nsamples=True),
    )

    removed = total - dense_numel(model)
    assert removed in reachable
    assert abs(removed - ratio * total) == pytest.approx(nearest)


def test_a_ratio_beyond_the_pruned_blocks_is_a_spec_error(fixed_calibration):
    model = small_llama(4)
    with pytest.raises(SpecError, match="at most"):
        compress(
            model,
            Spec.parse("llm_pruner:0.7[nsamples=2,first=1,last=1]"),
            fixed_calibration(nsamples=4, seqlen=24, honour_nsamples=True),
        )


# The whole method


def test_pruned_model_generates_with_a_cache_and_restores_exactly(fresh_tiny, fixed_calibration):
    model = fresh_tiny.model
    snapshot, original, logits = Snapshot(model), state_dict_hash(model), logits_of(model)
    footprint = compress(
        model,
        Spec.parse("llm_pruner:0.4[nsamples=2]"),
        fixed_calibration(nsamples=4, seqlen=24, honour_nsamples=True),
    )
    assert footprint.relative_size == pytest.approx(dense_numel(model) / 107072)
    ids = torch.arange(2, 10)[None]
    with torch.no_grad():
        cached = model.generate(ids, max_new_tokens=5, do_sample=False, use_cache=True)
        uncached = model.generate(ids, max_new_tokens=5, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
    snapshot.restore(model)
    assert state_dict_hash(model) == original
    assert not hasattr(model.config, "layer_widths")
    assert torch.equal(logits_of(model), logits)


def test_recover_lora_fine_tunes_the_pruned_model(fresh_tiny, fixed_calibration):
    calibration = fixed_calibration(nsamples=4, seqlen=24, honour_nsamples=True)
    plain = copy.deepcopy(fresh_tiny.model)
    compress(plain, Spec.parse("llm_pruner:0.3[nsamples=2]"), calibration)
    model = fresh_tiny.model
    footprint = compress(
        model, Spec.parse("llm_pruner:0.3[nsamples=2,recover=lora,steps=4]"), calibration
    )
    assert [p.shape for p in model.parameters()] == [p.shape for p in plain.parameters()]
    assert state_dict_hash(model) != state_dict_hash(plain)
    assert footprint.compressed_numel == sum(
        p.numel() for n, p in model.named_parameters() if "layers" in n and "proj" in n
    )


def test_every_study_spec_is_accepted():
    specs = {
        line.split(",")[2]
        for path in STUDY.glob("table*.csv")
        for line in path.read_text().splitlines()[1:]
        if ",llm_pruner" in line
    }
    assert len(specs) == 16
    for text in specs:
        registry.validate(Spec.parse(text))
