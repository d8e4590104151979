"""Structured methods: ShortGPT's choice, SLEB's greedy loss, SliceGPT's invariance,
real removal of blocks and dimensions, exact restore."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from mpt_core.engine.layerwise import decoder_layers
from mpt_core.engine.signals import block_influence, inputs_of_alive_blocks, loss_from
from mpt_core.models import state_dict_hash
from mpt_core.pipeline import compress
from mpt_core.prune import sleb as sleb_module
from mpt_core.prune.blocks import blocks_to_remove, remove_blocks
from mpt_core.prune.sleb import least_harmful
from mpt_core.prune.slicegpt import SlicedDecoderLayer, fold_norms, rotate_and_slice
from mpt_core.snapshot import Snapshot
from mpt_core.spec import Spec
from mpt_core.storage import dense_numel


def deep_tiny(layers: int = 5, tied: bool = False):
    """tiny-llama's shape with more blocks (block choice needs more than two)."""
    from transformers import LlamaConfig, LlamaForCausalLM

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
    torch.manual_seed(1)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # random norm scales, so that folding them is really tested
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
    return model


def logits_of(model, ids=None) -> torch.Tensor:
    ids = torch.arange(2, 2 + 24).reshape(2, 12) if ids is None else ids
    with torch.no_grad():
        return model(ids, use_cache=False).logits


def calibration_nll(model, windows: torch.Tensor) -> float:
    with torch.no_grad():
        logits = model(windows, use_cache=False).logits[:, :-1]
    return F.cross_entropy(logits.flatten(0, 1), windows[:, 1:].flatten(), reduction="sum").item()


# ShortGPT


def test_shortgpt_removes_exactly_the_lowest_block_influence(fixed_calibration):
    model = deep_tiny(6)
    calibration = fixed_calibration()
    influence = block_influence(model, calibration.windows(None))
    blocks = list(decoder_layers(model))
    keep = sorted(sorted(range(6), key=influence.__getitem__)[3:])

    compress(model, Spec.parse("shortgpt:0.5"), calibration)

    assert list(decoder_layers(model)) == [blocks[i] for i in keep]
    assert model.config.num_hidden_layers == 3


def test_block_influence_is_one_minus_cosine_of_block_input_and_output(fixed_calibration):
    model = deep_tiny(3)
    windows = fixed_calibration().windows(None)
    with torch.no_grad():
        states = model(windows, output_hidden_states=True, use_cache=False).hidden_states
    # hidden_states[i] enters block i; the last entry is after the final norm, so block 2's
    # output is checked through block 1's input/output pair only
    expected = [
        1 - F.cosine_similarity(states[i], states[i + 1], dim=-1).mean().item() for i in (0, 1)
    ]
    assert block_influence(model, windows)[:2] == pytest.approx(expected, abs=1e-5)


# SLEB


def test_sleb_tail_loss_is_the_models_loss(fixed_calibration):
    """The per-candidate shortcut (start from the cached input of the candidate) gives the
    same calibration loss as running the whole model without that block."""
    model = deep_tiny(5)
    windows = fixed_calibration().windows(None)
    alive = list(range(5))
    entering = inputs_of_alive_blocks(model, alive, windows)
    blocks = decoder_layers(model)
    for j in (1, 3):
        fast = loss_from(model, [blocks[i] for i in alive[j + 1 :]], entering[j], windows)
        without = copy.deepcopy(model)
        remove_blocks(without, [j])
        assert fast == pytest.approx(calibration_nll(without, windows), rel=1e-5)


def test_sleb_removes_the_block_whose_absence_costs_least_each_round(fixed_calibration):
    model = deep_tiny(6)
    windows = fixed_calibration().windows(None)
    reference = copy.deepcopy(model)
    # brute force, as the authors' loop: every candidate off in turn, the best goes
    expected = []
    for _ in range(2):
        alive = [i for i in range(6) if i not in expected]
        losses = {}
        for position in range(1, len(alive) - 1):  # barriers of 1 block at each end
            trial = copy.deepcopy(reference)
            remove_blocks(trial, expected + [alive[position]])
            losses[alive[position]] = calibration_nll(trial, windows)
        expected.append(min(losses, key=losses.get))
    blocks = list(decoder_layers(model))
    alive = list(range(6))
    assert alive[least_harmful(model, alive, windows, 1, 1)] == expected[0]

    compress(model, Spec.parse("sleb:0.3"), fixed_calibration())

    kept = [blocks[i] for i in range(6) if i not in expected]
    assert list(decoder_layers(model)) == kept


def test_sleb_keeps_its_rounds_for_larger_ratios_and_matches_a_fresh_run(
    fixed_calibration, monkeypatch
):
    """A larger R only adds rounds to a smaller one's (round r depends on the rounds before
    it alone); the result is a fresh run's; changed weights start the rounds again."""
    model, calibration = deep_tiny(6), fixed_calibration()
    snapshot, rounds = Snapshot(model), []
    real = sleb_module.least_harmful
    monkeypatch.setattr(sleb_module, "least_harmful", lambda *a: rounds.append(1) or real(*a))
    sleb_module._ORDERS.clear()
    compress(model, Spec.parse("sleb:0.2"), calibration)  # 1 block of 6
    snapshot.restore(model)
    compress(model, Spec.parse("sleb:0.5"), calibration)  # 3 blocks
    kept = state_dict_hash(model)
    assert len(rounds) == 3
    sleb_module._ORDERS.clear()
    snapshot.restore(model)
    compress(model, Spec.parse("sleb:0.5"), calibration)
    assert state_dict_hash(model) == kept and len(rounds) == 6
    snapshot.restore(model)
    with torch.no_grad():
        decoder_layers(model)[2].input_layernorm.weight.mul_(0.5)
    compress(model, Spec.parse("sleb:0.2"), calibration)
    assert len(rounds) == 7
    sleb_module._ORDERS.clear()


# Block removal


def test_remove_blocks_renumbers_layers_and_generates_with_a_cache():
    model = deep_tiny(5)
    remove_blocks(model, [1, 3])
    assert model.config.num_hidden_layers == 3
    assert [block.self_attn.layer_idx for block in decoder_layers(model)] == [0, 1, 2]
    ids = torch.arange(2, 10)[None]
    with torch.no_grad():
        cached = model.generate(ids, max_new_tokens=6, do_sample=False, use_cache=True)
        uncached = model.generate(ids, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize(
    ("ratio", "layers", "removed"), [(0.25, 2, 1), (0.25, 30, 8), (0.1, 30, 3), (0.8, 30, 24)]
)
def test_block_count_rounds_to_whole_blocks(ratio, layers, removed):
    model = SimpleNamespace(model=SimpleNamespace(layers=[None] * layers))
    assert blocks_to_remove(model, ratio) == removed


def test_shortgpt_on_tiny_llama_removes_one_of_two_blocks_for_real(fresh_tiny, fixed_calibration):
    """shortgpt:0.25 on the 2-block tiny model: round(0.25·2) = 1 block goes; the parameter
    count and footprint drop by exactly that block's parameters."""
    model = fresh_tiny.model
    total = dense_numel(model)
    per_block = [sum(p.numel() for p in block.parameters()) for block in decoder_layers(model)]
    snapshot, original = Snapshot(model), state_dict_hash(model)

    footprint = compress(model, Spec.parse("shortgpt:0.25"), fixed_calibration())

    assert len(decoder_layers(model)) == model.config.num_hidden_layers == 1
    assert dense_numel(model) == total - per_block[0]
    assert footprint.relative_size == pytest.approx((total - per_block[0]) / total)
    assert torch.isfinite(logits_of(model)).all()
    snapshot.restore(model)
    assert state_dict_hash(model) == original
    assert model.config.num_hidden_layers == 2


# SliceGPT


def test_folding_norms_leaves_outputs_unchanged():
    model = deep_tiny(3, tied=True)
    before = logits_of(model)
    fold_norms(model)
    assert all(isinstance(block, SlicedDecoderLayer) for block in decoder_layers(model))
    torch.testing.assert_close(logits_of(model), before, rtol=0, atol=1e-4)


@pytest.mark.parametrize("tied", [False, True])
def test_slicegpt_rotation_without_slicing_is_invariant(tied, fixed_calibration):
    """Computational invariance (the paper's Theorem 1): rotating every block into its PCA
    basis and keeping all d dimensions leaves the outputs unchanged to 1e-4."""
    model = deep_tiny(3, tied=tied)
    before = logits_of(model)
    fold_norms(model)
    rotate_and_slice(model, fixed_calibration().windows(None), dimension=64)
    embed = model.model.embed_tokens.weight
    assert not torch.allclose(embed, deep_tiny(3, tied=tied).model.embed_tokens.weight)
    torch.testing.assert_close(logits_of(model), before, rtol=0, atol=1e-4)


def test_slicegpt_really_narrows_tiny_llama(fresh_tiny, fixed_calibration):
    """slicegpt:0.3 on tiny-llama (d = 64): d' = ⌊0.7·64⌋ = 44, rounded down to a multiple
    of 8: 40 (37.5% of the dimension sliced). Every matrix reading or writing the stream
    loses those rows/columns; the shortcut matrices (40×40, and 40×64 into the full-width
    head) are added, as in the paper's parameter count."""
    model = fresh_tiny.model
    config = model.config
    d, dp, vocab, inter = 64, 40, config.vocab_size, config.intermediate_size
    kv = config.num_key_value_heads * config.hidden_size // config.num_attention_heads
    total = dense_numel(model)
    snapshot, original = Snapshot(model), state_dict_hash(model)

    footprint = compress(model, Spec.parse("slicegpt:0.3"), fixed_calibration())

    layers = decoder_layers(model)
    for index, block in enumerate(layers):
        out = d if index == len(layers) - 1 else dp
        attention, mlp = block.self_attn, block.mlp
        assert attention.q_proj.weight.shape == (d, dp)
        assert attention.k_proj.weight.shape == attention.v_proj.weight.shape == (kv, dp)
        assert attention.o_proj.weight.shape == (dp, d)
        assert mlp.gate_proj.weight.shape == mlp.up_proj.weight.shape == (inter, dp)
        assert mlp.down_proj.weight.shape == (out, inter)
        assert block.attn_shortcut.weight.shape == (dp, dp)
        assert block.mlp_shortcut.weight.shape == (out, dp)
    assert model.model.embed_tokens.weight.shape == (vocab, dp)
    assert model.lm_head.weight.shape == (vocab, d)
    assert model.config.sliced_hidden_size == dp

    def block(out: int) -> int:
        attention = d * dp + 2 * kv * dp + dp * d + dp * dp
        return attention + 2 * inter * dp + out * inter + out * dp

    expected = vocab * dp + vocab * d + block(dp) + block(d)
    assert dense_numel(model) == expected
    assert footprint.relative_size == pytest.approx(expected / total)
    assert footprint.relative_size < 0.8
    assert torch.isfinite(logits_of(model)).all()

    snapshot.restore(model)
    assert state_dict_hash(model) == original
    assert not any(isinstance(b, SlicedDecoderLayer) for b in decoder_layers(model))
    assert not hasattr(model.config, "sliced_hidden_size")


def test_slicegpt_keeps_the_model_close_at_small_ratios(fixed_calibration):
    model = deep_tiny(3)
    calibration = fixed_calibration(nsamples=16)
    windows = calibration.windows(None)
    dense = calibration_nll(model, windows)
    compress(model, Spec.parse("slicegpt:0.1"), calibration)
    assert calibration_nll(model, windows) < 1.1 * dense
