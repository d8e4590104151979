"""Sheared LLaMA: hard-concrete gates, the Lagrangian toward a target shape, the target
shape from R, masked model = pruned model, and a real, restorable cut."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import LlamaConfig, LlamaForCausalLM

from mpt_core.errors import SpecError
from mpt_core.models import state_dict_hash
from mpt_core.pipeline import compress
from mpt_core.prune.sheared import (
    BETAS,
    MASK_TYPES,
    TEMPERATURE,
    HardConcrete,
    MaskedRMSNorm,
    Shape,
    ShearingMasks,
    continue_pretraining,
    language_loss,
    lr_factor,
    masked,
    model_shape,
    prune_to_gates,
    target_shape,
    train_masks,
)
from mpt_core.snapshot import Snapshot
from mpt_core.spec import Spec

pytestmark = pytest.mark.usefixtures("one_thread")

SMOLLM2 = Shape(layers=30, hidden=576, kv_heads=3, intermediate=1536, group=3, head_dim=64)
TINY = Shape(layers=2, hidden=64, kv_heads=2, intermediate=128, group=2, head_dim=16)
SAMPLES = 20_000
DRAWS = 1000


def gate(log_alpha: float) -> HardConcrete:
    mask = HardConcrete((SAMPLES,), SAMPLES, torch.Generator().manual_seed(0), "cpu")
    with torch.no_grad():
        mask.log_alpha.fill_(log_alpha)
    return mask


def assert_frequency(observed: torch.Tensor, probability: float) -> None:
    """A sample frequency within 5 standard errors of its probability."""
    error = math.sqrt(probability * (1 - probability) / SAMPLES)
    assert abs(observed.float().mean().item() - probability) <= 5 * error + 1e-3


@settings(max_examples=15, deadline=None)
@given(log_alpha=st.floats(-4.0, 4.0), seed=st.integers(0, 2**16))
def test_hard_concrete_samples_match_their_closed_forms(log_alpha, seed):
    """z lies in [0, 1]; P(z = 0) = sigmoid(−β·ln 11 − log α) (the expected L0 is its
    complement) and P(z = 1) = sigmoid(log α − β·ln 11), by the stretch (−0.1, 1.1)."""
    mask = gate(log_alpha)
    z = mask.sample(torch.Generator().manual_seed(seed))
    assert ((z >= 0) & (z <= 1)).all()
    zero = 1 / (1 + math.exp(TEMPERATURE * math.log(11) + log_alpha))
    one = 1 / (1 + math.exp(TEMPERATURE * math.log(11) - log_alpha))
    assert mask.probability_zero()[0].item() == pytest.approx(zero, rel=1e-5)
    assert_frequency(z == 0, zero)
    assert_frequency(z == 1, one)
    assert_frequency(z > 0, mask.expected_score()[0].item())


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_expected_size_is_the_mean_size_of_sampled_architectures(seed):
    """E[block parameters] in closed form = the Monte-Carlo mean of the parameter count of
    architectures drawn from the gates (the gates are independent)."""
    generator = torch.Generator().manual_seed(seed)
    masks = ShearingMasks(TINY, target_shape(TINY, 0.5), generator, "cpu")
    with torch.no_grad():
        for mask in masks.masks.values():
            mask.log_alpha.uniform_(-3, 3, generator=generator)
    per_group = TINY.head_dim * (2 * TINY.group + 2)
    counts = []
    for _ in range(DRAWS):
        z = {name: gates != 0 for name, gates in masks.sample(generator).items()}
        per_layer = z["head"].sum(1) * per_group + z["intermediate"].sum(1) * 3
        counts.append(float(z["hidden"].sum() * (z["layer"] * per_layer).sum()))
    counts = torch.tensor(counts)
    expected = masks.expected_block_parameters().item()
    assert abs(counts.mean().item() - expected) <= 5 * counts.std().item() / math.sqrt(DRAWS)


def test_deterministic_gates_keep_the_target_count_of_largest_log_alpha():
    mask = HardConcrete((3, 5), 2, torch.Generator().manual_seed(0), "cpu")
    log_alpha = torch.tensor([[1.0, -2.0, 3.0, 0.5, 4.0], [0.0, 0.1, -1.0, 2.0, -3.0]] * 2)[:3]
    with torch.no_grad():
        mask.log_alpha.copy_(log_alpha)
    z = mask.deterministic()
    soft = torch.sigmoid(log_alpha / TEMPERATURE * 0.8)
    keep = torch.tensor([[0, 0, 1, 0, 1], [0, 1, 0, 1, 0], [0, 0, 1, 0, 1]], dtype=torch.bool)
    torch.testing.assert_close(z, torch.where(keep, soft, torch.zeros_like(soft)))


@pytest.mark.parametrize("ratio", [0.1, 0.3, 0.5, 0.8])
@pytest.mark.parametrize("base", [SMOLLM2, TINY], ids=["smollm2", "tiny"])
def test_target_shape_keeps_one_minus_r_of_the_block_parameters(base, ratio):
    """Within one intermediate channel per layer; hidden and key/value heads scale alike."""
    target = target_shape(base, ratio)
    channel = 3 * target.hidden * target.layers
    assert abs(target.block_parameters() - (1 - ratio) * base.block_parameters()) <= channel / 2
    assert target.layers == base.layers
    assert target.hidden == round(math.sqrt(1 - ratio) * base.hidden)
    assert target.kv_heads == max(1, round(math.sqrt(1 - ratio) * base.kv_heads))
    assert (target.head_dim, target.group) == (base.head_dim, base.group)


def test_target_shape_with_fewer_layers_and_its_limits():
    target = target_shape(SMOLLM2, 0.5, layers=20)
    assert target.layers == 20
    assert (
        abs(target.block_parameters() - 0.5 * SMOLLM2.block_parameters()) <= 3 * target.hidden * 10
    )
    with pytest.raises(SpecError, match="layers"):
        target_shape(SMOLLM2, 0.1, layers=10)
    with pytest.raises(SpecError, match="layers"):
        target_shape(SMOLLM2, 0.1, layers=31)


def test_lagrangian_drives_the_expected_shape_to_the_target():
    """The masks alone, under the Lagrangian with the reference's optimizer (lr 1.0,
    multipliers ascending) and ramp: after 200 steps every mask type's expected sparsity
    is within 0.03 of its target and the expected size within 3% of the target's."""
    target = target_shape(TINY, 0.5)
    masks = ShearingMasks(TINY, target, torch.Generator().manual_seed(0), "cpu")
    optimizer = torch.optim.AdamW(
        [
            {"params": [mask.log_alpha for mask in masks.masks.values()], "lr": 1.0},
            {"params": list(masks.lambdas.values()), "lr": 1.0},
        ],
        betas=BETAS,
        weight_decay=0.0,
    )
    steps = 200
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, steps))
    for step in range(steps):
        masks.constrain()
        optimizer.zero_grad()
        masks.lagrangian(step / steps).backward()
        for multiplier in masks.lambdas.values():
            multiplier.grad.neg_()
        optimizer.step()
        schedule.step()
    masks.constrain()
    with torch.no_grad():
        for name in MASK_TYPES:
            gap = masks.masks[name].expected_sparsity() - masks.target_sparsity(name, 1.0)
            assert gap.abs().max() < 0.03, name
        expected = masks.expected_block_parameters().item()
    assert expected == pytest.approx(target.block_parameters(), rel=0.03)


def tiny_llama(tied: bool, layers: int = 3) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=258,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=tied,
    )
    torch.manual_seed(3)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # random norm scales, so that folding the hidden gate is tested
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
    return model


def logits_of(model) -> torch.Tensor:
    ids = torch.arange(2, 2 + 24).reshape(2, 12)
    with torch.no_grad():
        return model(ids, use_cache=False).logits


def test_open_gates_leave_the_model_unchanged():
    """With every gate at 1 the masked model is the model: the gating hooks and the
    norms that average over open dimensions only change nothing."""
    model = tiny_llama(tied=True)
    base = model_shape(model)
    gates = {
        "layer": torch.ones(base.layers),
        "head": torch.ones(base.layers, base.kv_heads),
        "intermediate": torch.ones(base.layers, base.intermediate),
        "hidden": torch.ones(base.hidden),
    }
    dense = logits_of(model)
    with masked(model, gates):
        torch.testing.assert_close(logits_of(model), dense, rtol=0, atol=1e-5)


@pytest.mark.parametrize("tied", [False, True])
def test_pruned_model_computes_what_the_masked_model_did(tied):
    """The reference's own correctness check (utils/test_pruning.py): run the model under
    the deterministic gates, then fold and cut; the logits agree (here to 1e-4), with a
    layer, heads, channels and hidden dimensions removed."""
    model = tiny_llama(tied)
    base = model_shape(model)
    target = target_shape(base, 0.5, layers=2)
    masks = ShearingMasks(base, target, torch.Generator().manual_seed(0), "cpu")
    with torch.no_grad():
        for mask in masks.masks.values():
            mask.log_alpha.uniform_(-4, 4)
    gates = masks.deterministic()
    with masked(model, gates):
        expected = logits_of(model)
    prune_to_gates(model, gates, target)

    torch.testing.assert_close(logits_of(model), expected, rtol=0, atol=1e-4)
    assert model_shape(model) == target
    assert not any(isinstance(m, MaskedRMSNorm) for m in model.modules())
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied


def test_sheared_cuts_tiny_llama_to_a_loadable_target_and_restores(fresh_tiny, fixed_calibration):
    """sheared:0.5[steps=4]: the model is the target shape, its config describes it (a
    fresh LlamaForCausalLM from the config loads the weights and computes the same logits),
    and the snapshot brings back the original."""
    model = fresh_tiny.model
    snapshot, original = Snapshot(model), state_dict_hash(model)
    target = target_shape(model_shape(model), 0.5)

    footprint = compress(
        model, Spec.parse("sheared:0.5[steps=4]"), fixed_calibration(nsamples=4, seqlen=16)
    )

    assert model_shape(model) == target
    rebuilt = LlamaForCausalLM(model.config).eval()
    rebuilt.load_state_dict(model.state_dict())
    torch.testing.assert_close(logits_of(rebuilt), logits_of(model))
    assert torch.isfinite(logits_of(model)).all()
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert footprint.relative_size < 0.8

    snapshot.restore(model)
    assert state_dict_hash(model) == original
    assert model.config.hidden_size == 64


def test_training_moves_weights_and_gates_and_leaves_no_trace(fixed_calibration):
    model = tiny_llama(tied=False)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    base = model_shape(model)
    masks = ShearingMasks(base, target_shape(base, 0.5), torch.Generator().manual_seed(0), "cpu")
    log_alpha = masks.masks["intermediate"].log_alpha.detach().clone()

    train_masks(
        model,
        masks,
        fixed_calibration(nsamples=4, seqlen=16).windows(None),
        steps=6,
        batch=2,
        seed=0,
    )

    assert not torch.equal(masks.masks["intermediate"].log_alpha, log_alpha)
    moved = [not torch.equal(p, before[name]) for name, p in model.named_parameters()]
    assert all(moved)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert not any(isinstance(m, MaskedRMSNorm) for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


@given(steps=st.integers(2, 5000), warmup=st.floats(0.0, 0.5))
def test_lr_factor_warms_up_linearly_then_decays_to_the_floor(steps, warmup):
    factors = [lr_factor(step, steps, warmup) for step in range(steps)]
    ramp = max(1, round(warmup * steps))
    assert factors[: min(ramp, steps)] == pytest.approx(
        [(s + 1) / ramp for s in range(min(ramp, steps))]
    )
    decay = factors[ramp:]
    assert all(later <= earlier for earlier, later in zip(decay, decay[1:]))
    assert all(0.1 - 1e-12 <= factor <= 1 for factor in decay)


def test_continued_pretraining_lowers_the_loss_and_leaves_the_weights_frozen(fixed_calibration):
    model = tiny_llama(tied=True)
    for param in model.parameters():
        param.requires_grad_(False)
    windows = fixed_calibration(nsamples=4, seqlen=32).windows(None)
    with torch.no_grad():
        before = language_loss(model, windows).item()

    continue_pretraining(model, windows, steps=30, batch=4, seed=0)

    with torch.no_grad():
        after = language_loss(model, windows).item()
    assert after < before - 0.05
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())


def test_recover_steps_train_the_cut_model_and_keep_its_shape(fixed_calibration):
    """`recover_steps` is the recovery budget: the same cut, then different weights."""
    pruned, recovered = tiny_llama(tied=False), tiny_llama(tied=False)
    compress(pruned, Spec.parse("sheared:0.5[steps=4]"), fixed_calibration(nsamples=4, seqlen=16))
    compress(
        recovered,
        Spec.parse("sheared:0.5[steps=4,recover_steps=3]"),
        fixed_calibration(nsamples=4, seqlen=16),
    )

    assert model_shape(recovered) == model_shape(pruned)
    assert not torch.equal(logits_of(recovered), logits_of(pruned))


def test_a_negative_recovery_budget_is_refused(fixed_calibration):
    with pytest.raises(SpecError, match="recover_steps=-1 .*0 or more"):
        compress(
            tiny_llama(tied=False),
            Spec.parse("sheared:0.5[recover_steps=-1]"),
            fixed_calibration(nsamples=4, seqlen=16),
        )
