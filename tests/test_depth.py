"""Depth pruning (Gromov et al.): angular distance between the residual stream at layer ℓ and
ℓ + n on the last token, the contiguous block that changes it least removed for real."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from mpt_core.engine.layerwise import decoder_layers
from mpt_core.errors import SpecError
from mpt_core.models import state_dict_hash
from mpt_core.pipeline import compress
from mpt_core.prune.depth import angular_distance, block_distances, last_token_states
from mpt_core.snapshot import Snapshot
from mpt_core.spec import Spec

pytestmark = pytest.mark.usefixtures("one_thread")


def small_llama(layers: int = 6):
    config = LlamaConfig(
        vocab_size=258,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    torch.manual_seed(2)
    return LlamaForCausalLM(config).eval()


def make_identity(block) -> None:
    """A block whose attention and MLP write nothing passes the residual stream through."""
    with torch.no_grad():
        block.self_attn.o_proj.weight.zero_()
        block.mlp.down_proj.weight.zero_()


def test_angular_distance_is_the_angle_over_pi():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [3.0, 1.0]], dtype=torch.float64)
    b = torch.tensor([[2.0, 0.0], [0.0, 5.0], [-1.0, 0.0], [1.0, 2.0]], dtype=torch.float64)
    expected = [0.0, 0.5, 1.0, math.acos(5 / math.sqrt(10 * 5)) / math.pi]
    torch.testing.assert_close(angular_distance(a, b), torch.tensor(expected, dtype=torch.float64))


def test_states_are_the_residual_stream_at_the_last_token(fixed_calibration):
    """x^(ℓ) is what block ℓ receives (HF's hidden_states[ℓ]); x^(L) is the last block's
    output before the final norm."""
    model = small_llama(3)
    windows = fixed_calibration(nsamples=6, seqlen=20).windows(None)
    states = last_token_states(model, windows)
    with torch.no_grad():
        hidden = model(windows, output_hidden_states=True, use_cache=False).hidden_states
    assert states.shape == (4, 6, 64)
    for layer in range(3):
        torch.testing.assert_close(states[layer], hidden[layer][:, -1].double(), atol=1e-5, rtol=0)
    final = model.model.norm(states[3].float())
    torch.testing.assert_close(final, hidden[3][:, -1], atol=1e-4, rtol=0)


def test_identity_blocks_have_distance_zero(fixed_calibration):
    model = small_llama(6)
    for index in (2, 3):
        make_identity(decoder_layers(model)[index])
    states = last_token_states(model, fixed_calibration(nsamples=6, seqlen=20).windows(None))
    one, two = block_distances(states, 1), block_distances(states, 2)
    assert len(one) == 6 and len(two) == 5
    assert one[2] == pytest.approx(0, abs=1e-7) and one[3] == pytest.approx(0, abs=1e-7)
    assert two[2] == pytest.approx(0, abs=1e-7)
    assert min(one[i] for i in (0, 1, 4, 5)) > 1e-3
    assert min(two[i] for i in (0, 1, 3, 4)) > 1e-3


def test_distance_is_averaged_over_windows(fixed_calibration):
    model = small_llama(3)
    states = last_token_states(model, fixed_calibration(nsamples=6, seqlen=20).windows(None))
    per_window = [angular_distance(states[0, w], states[2, w]).item() for w in range(6)]
    assert block_distances(states, 2)[0] == pytest.approx(sum(per_window) / 6)


def test_depth_removes_the_contiguous_block_of_smallest_distance(fixed_calibration):
    """depth:0.34 on 6 blocks removes round(0.34·6) = 2: the identity pair 3, 4."""
    model = small_llama(6)
    for index in (3, 4):
        make_identity(decoder_layers(model)[index])
    blocks = list(decoder_layers(model))
    before = model(torch.arange(2, 14)[None], use_cache=False).logits.detach()

    compress(model, Spec.parse("depth:0.34"), fixed_calibration(nsamples=6, seqlen=20))

    assert list(decoder_layers(model)) == [blocks[i] for i in (0, 1, 2, 5)]
    assert model.config.num_hidden_layers == 4
    after = model(torch.arange(2, 14)[None], use_cache=False).logits.detach()
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)


def test_the_minimum_is_found_among_all_starts(fixed_calibration):
    model = small_llama(5)
    windows = fixed_calibration(nsamples=6, seqlen=20).windows(None)
    distances = block_distances(last_token_states(model, windows), 2)
    start = min(range(len(distances)), key=distances.__getitem__)
    blocks = list(decoder_layers(model))
    compress(model, Spec.parse("depth:0.4"), fixed_calibration(nsamples=6, seqlen=20))
    kept = [blocks[i] for i in range(5) if i not in (start, start + 1)]
    assert list(decoder_layers(model)) == kept


def test_heal_trains_only_the_mlps_of_the_remaining_blocks(fresh_tiny, fixed_calibration):
    model = fresh_tiny.model
    snapshot, original = Snapshot(model), state_dict_hash(model)
    before = {
        id(block): (state_dict_hash(block.self_attn), state_dict_hash(block.mlp))
        for block in decoder_layers(model)
    }
    compress(
        model,
        Spec.parse("depth:0.5[heal=lora,steps=4,lr=0.01]"),
        fixed_calibration(nsamples=6, seqlen=20),
    )
    (block,) = decoder_layers(model)
    attention, mlp = before[id(block)]
    assert state_dict_hash(block.self_attn) == attention
    assert state_dict_hash(block.mlp) != mlp
    assert model.config.num_hidden_layers == 1
    snapshot.restore(model)
    assert state_dict_hash(model) == original


def test_only_the_angular_metric_is_offered(fixed_calibration):
    with pytest.raises(SpecError, match="angular"):
        compress(
            small_llama(3),
            Spec.parse("depth:0.3[metric=taylor]"),
            fixed_calibration(nsamples=6, seqlen=20),
        )
