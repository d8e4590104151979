"""LoRAPrune: importance from LoRA weights and gradients, a moving average, iterative masking
on the authors' cubic schedule, and masks that become a narrower model exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from mpt_core.engine.layerwise import decoder_layers
from mpt_core.engine.lora import LoRALinear, add_adapters, merge_adapters
from mpt_core.models import state_dict_hash
from mpt_core.pipeline import compress
from mpt_core.prune.loraprune import (
    BlockMasks,
    IterativePruner,
    _masked_to,
    block_sensitivity,
    lora_gradient,
    loraprune_count,
    pruned_block_indices,
    sparsity_at,
    weight_sensitivity,
)
from mpt_core.prune.structure import block_shape, removed_params
from mpt_core.snapshot import Snapshot
from mpt_core.spec import Spec
from mpt_core.storage import dense_numel

pytestmark = pytest.mark.usefixtures("one_thread")


def small_llama(layers: int = 4):
    config = LlamaConfig(
        vocab_size=258,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    torch.manual_seed(3)
    return LlamaForCausalLM(config).eval()


def logits_of(model) -> torch.Tensor:
    ids = torch.arange(2, 2 + 24).reshape(2, 12)
    with torch.no_grad():
        return model(ids, use_cache=False).logits


def random_adapter(out: int = 4, inp: int = 6, rank: int = 2, seed: int = 0) -> LoRALinear:
    generator = torch.Generator().manual_seed(seed)
    adapter = LoRALinear(nn.Linear(inp, out, bias=False), rank, alpha=2 * rank)
    with torch.no_grad():
        adapter.lora_B.copy_(torch.randn(out, rank, generator=generator))
    adapter.lora_A.grad = torch.randn(rank, inp, generator=generator)
    adapter.lora_B.grad = torch.randn(out, rank, generator=generator)
    return adapter


def random_grads(model) -> None:
    generator = torch.Generator().manual_seed(5)
    for module in model.modules():
        if isinstance(module, LoRALinear):
            with torch.no_grad():
                module.lora_B.normal_(generator=generator)
            module.lora_A.grad = torch.randn(module.lora_A.shape, generator=generator)
            module.lora_B.grad = torch.randn(module.lora_B.shape, generator=generator)


# The paper's criterion


def test_lora_gradient_is_the_papers_estimate_element_by_element():
    adapter = random_adapter()
    A, B = adapter.lora_A.detach(), adapter.lora_B.detach()
    gA, gB = adapter.lora_A.grad, adapter.lora_B.grad
    expected = torch.empty(4, 6)
    for i in range(4):
        for j in range(6):
            expected[i, j] = sum(
                gB[i, k] * A[k, j] + B[i, k] * gA[k, j] - gB[i, k] * gA[k, j] for k in range(2)
            )
    torch.testing.assert_close(lora_gradient(adapter), expected)


def test_lora_gradient_is_minus_the_change_of_ba_in_one_unit_sgd_step():
    """The paper's derivation: B A after a step B − ∇B, A − ∇A changes by −Ĝ."""
    adapter = random_adapter(seed=1)
    A, B = adapter.lora_A.detach(), adapter.lora_B.detach()
    step = (B - adapter.lora_B.grad) @ (A - adapter.lora_A.grad) - B @ A
    torch.testing.assert_close(lora_gradient(adapter), -step)


def test_weight_sensitivity_multiplies_by_the_merged_weight():
    adapter = random_adapter(seed=2)
    merged = adapter.base.weight.detach() + adapter.delta().detach()
    expected = (lora_gradient(adapter) * merged).abs()
    torch.testing.assert_close(weight_sensitivity(adapter), expected)


def test_block_sensitivity_adds_unit_normalized_projection_scores():
    """Heads: q, k, v rows and o_proj columns of each key/value-head group, each projection's
    vector scaled to unit norm; channels: gate and up rows, the down_proj column."""
    model = small_llama(1)
    add_adapters(model, rank=2)
    random_grads(model)
    block = decoder_layers(model)[0]
    heads, channels = block_sensitivity(block, groups=2, channels=128)

    def unit(vector):
        return vector / vector.norm()

    attention, mlp = block.self_attn, block.mlp
    q = weight_sensitivity(attention.q_proj)
    k, v = weight_sensitivity(attention.k_proj), weight_sensitivity(attention.v_proj)
    o = weight_sensitivity(attention.o_proj)
    expected_heads = (
        unit(torch.stack([q[:32].sum(), q[32:].sum()]))
        + unit(torch.stack([k[:16].sum(), k[16:].sum()]))
        + unit(torch.stack([v[:16].sum(), v[16:].sum()]))
        + unit(torch.stack([o[:, :32].sum(), o[:, 32:].sum()]))
    )
    torch.testing.assert_close(heads, expected_heads)
    expected_channels = (
        unit(weight_sensitivity(mlp.gate_proj).sum(1))
        + unit(weight_sensitivity(mlp.up_proj).sum(1))
        + unit(weight_sensitivity(mlp.down_proj).sum(0))
    )
    torch.testing.assert_close(channels, expected_channels)


def test_the_moving_average_keeps_nine_tenths():
    model = small_llama(1)
    shape = block_shape(decoder_layers(model)[0])
    add_adapters(model, rank=2)
    random_grads(model)
    block = decoder_layers(model)[0]
    masks = BlockMasks(block, shape)
    heads, channels = block_sensitivity(block, 2, 128)
    masks.update()
    masks.update()
    torch.testing.assert_close(masks.head_score, 0.19 * heads)
    torch.testing.assert_close(masks.channel_score, 0.19 * channels)


# The schedule and the masks


def test_schedule_is_the_authors_cubic_ramp():
    final, steps = 0.5, 100
    assert sparsity_at(0, steps, final) == 0
    assert sparsity_at(10, steps, final) == 0
    # step 50: 1 − (50 − 10)/80 = 0.5 remaining → 0.5 − 0.5·0.125
    assert sparsity_at(50, steps, final) == pytest.approx(0.4375)
    assert sparsity_at(90, steps, final) == pytest.approx(final)
    assert sparsity_at(91, steps, final) == final
    ramp = [sparsity_at(s, steps, final) for s in range(steps)]
    assert ramp == sorted(ramp)


def test_masks_only_grow_and_count_int_units_times_ratio():
    mask = torch.ones(10)
    score = torch.arange(10.0)
    mask = _masked_to(mask, score, 0.25)  # int(2.5) = 2: units 0 and 1
    assert mask.tolist() == [0, 0] + [1] * 8
    flipped = score.flip(0)  # units 0 and 1 now matter most, but masked stays masked
    mask = _masked_to(mask, flipped, 0.45)
    assert mask.tolist() == [0, 0, 1, 1, 1, 1, 1, 1, 0, 0]
    assert _masked_to(torch.ones(3), torch.zeros(3), 0.99).sum() == 1  # one unit stays
    assert loraprune_count(128, 1, 0.37) == 47


def test_pruning_runs_on_schedule_every_tenth_step_and_ends_at_the_final_ratio(monkeypatch):
    model = small_llama(3)
    blocks = list(decoder_layers(model))[:2]
    shapes = [block_shape(block) for block in blocks]
    add_adapters(model, rank=2)
    monkeypatch.setattr(BlockMasks, "update", lambda self: None)
    pruner = IterativePruner(blocks, shapes, final=0.6, steps=30)
    ratios = []
    for step in range(30):
        pruner(step)
        ratios.append(pruner.ratio)
    changes = [step for step in range(1, 30) if ratios[step] != ratios[step - 1]]
    assert changes == [10, 20, 27]  # the schedule reaches 0.6 at step 27 (30 − 3)
    assert ratios[-1] == 0.6
    assert int((pruner.blocks[0].channel_mask == 0).sum()) == int(128 * 0.6)


def test_masked_model_equals_the_pruned_model():
    """Masking q, k, v and gate, up outputs is exactly removing those heads and channels."""
    model = small_llama(3)
    shape = block_shape(decoder_layers(model)[1])
    add_adapters(model, rank=2)
    random_grads(model)
    block = decoder_layers(model)[1]
    masks = BlockMasks(block, shape)
    masks.head_mask = torch.tensor([0.0, 1.0])
    masks.channel_mask = (torch.arange(128) % 3 != 0).float()
    masked = logits_of(model)

    merge_adapters(model)
    masks.remove()

    assert block.self_attn.q_proj.weight.shape == (32, 64)
    assert block.self_attn.k_proj.weight.shape == (16, 64)
    assert block.mlp.down_proj.weight.shape == (64, 85)
    torch.testing.assert_close(logits_of(model), masked, rtol=0, atol=1e-5)


# The whole method


def test_frozen_blocks_are_the_authors():
    assert pruned_block_indices(32) == range(3, 31)
    assert pruned_block_indices(30) == range(3, 29)
    assert pruned_block_indices(2) == range(0, 1)


def test_loraprune_removes_the_nearest_reachable_count_and_restores(fixed_calibration):
    model = small_llama(6)
    total = dense_numel(model)
    shapes = [block_shape(decoder_layers(model)[i]) for i in range(5)]
    reachable = {removed_params(shapes, s, loraprune_count) for s in np.linspace(0, 1, 20001)}
    snapshot, original = Snapshot(model), state_dict_hash(model)

    compress(
        model,
        Spec.parse("loraprune:0.3[steps=12,nsamples=4]"),
        fixed_calibration(nsamples=4, seqlen=24),
    )

    removed = total - dense_numel(model)
    assert removed in reachable
    assert abs(removed - 0.3 * total) == pytest.approx(min(abs(c - 0.3 * total) for c in reachable))
    widths = model.config.layer_widths
    assert widths[5] == {
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 128,
    }
    assert len({w["intermediate_size"] for w in widths[:5]}) == 1
    assert torch.isfinite(logits_of(model)).all()
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert all(not m._forward_hooks for m in model.modules())
    snapshot.restore(model)
    assert state_dict_hash(model) == original
