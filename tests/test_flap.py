"""FLAP: the fluctuation metric, the adaptive global ranking, bias compensation, real
narrowing with per-layer widths, and exact restore."""

from __future__ import annotations

import pytest
import torch

from mpt_core.engine.layerwise import (
    capture_layer0_inputs,
    decoder_layers,
    iterate_blocks,
    run_block,
)
from mpt_core.models import state_dict_hash
from mpt_core.pipeline import compress
from mpt_core.prune.flap import (
    EmptyAttention,
    Fluctuation,
    adaptive_masks,
    dense_layer_stats,
    keep_closest_to,
    prune_attention,
    prune_mlp,
    unit_parameters,
    wifv,
)
from mpt_core.snapshot import Snapshot
from mpt_core.spec import Spec
from mpt_core.storage import dense_numel

pytestmark = pytest.mark.usefixtures("one_thread")


def linear_weights(model) -> int:
    """Weights of the decoder blocks' linears: what FLAP's ratio is a fraction of."""
    return sum(
        module.weight.numel()
        for block in decoder_layers(model)
        for module in block.modules()
        if isinstance(module, torch.nn.Linear)
    )


def inputs_of(model, windows, name: str) -> list[torch.Tensor]:
    """The dense input of module ``name`` in every block, as (tokens, channels)."""
    caught = []
    for _, block, inputs in iterate_blocks(model, windows):
        seen: list[torch.Tensor] = []
        handle = block.get_submodule(name).register_forward_pre_hook(
            lambda _m, args, seen=seen: seen.append(args[0])
        )
        run_block(block, inputs)
        handle.remove()
        caught.append(torch.cat(seen).reshape(-1, seen[0].shape[-1]))
    return caught


def test_fluctuation_is_the_sample_variance_over_every_token():
    x = torch.tensor([[[1.0, 10.0], [3.0, 10.0]], [[5.0, 10.0], [7.0, 14.0]]])
    stats = Fluctuation(2, "cpu")
    stats.add_batch(x[:1])
    stats.add_batch(x[1:])
    # channel 0: tokens 1, 3, 5, 7 -> mean 4, squared deviations 9+1+1+9 = 20, / (4 - 1)
    # channel 1: tokens 10, 10, 10, 14 -> mean 11, 1+1+1+9 = 12, / 3
    torch.testing.assert_close(stats.variance, torch.tensor([20 / 3, 4.0], dtype=torch.float64))
    torch.testing.assert_close(stats.mean, torch.tensor([4.0, 11.0], dtype=torch.float64))

    linear = torch.nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0, 0.0], [2.0, 1.0], [0.0, 3.0]]))
    # WIFV: variance times the squared norm of the column the channel feeds (5 and 10)
    torch.testing.assert_close(
        wifv(stats, linear), torch.tensor([20 / 3 * 5, 4.0 * 10], dtype=torch.float64)
    )


def test_layer_scores_are_standardized_wifv_pooled_per_head(tiny, fixed_calibration):
    """Against a direct computation: o_proj/down_proj inputs caught on the dense model,
    torch.var over all tokens, squared for attention, standardized per layer, attention
    channels averaged per key/value group (2 query heads of 16 channels in tiny-llama)."""
    model, windows = tiny.model, fixed_calibration().windows(None)
    stats = dense_layer_stats(model, windows)
    o_inputs = inputs_of(model, windows, "self_attn.o_proj")
    down_inputs = inputs_of(model, windows, "mlp.down_proj")

    def standardized(x):
        return (x - x.mean()) / x.std()

    for block, layer, o_in, down_in in zip(decoder_layers(model), stats, o_inputs, down_inputs):
        o_w, down_w = block.self_attn.o_proj.weight.double(), block.mlp.down_proj.weight.double()
        attention = (o_in.double().var(0) * (o_w**2).sum(0)) ** 2
        mlp = down_in.double().var(0) * (down_w**2).sum(0)
        expected_heads = standardized(attention).reshape(2, 32).mean(1)
        torch.testing.assert_close(layer.attention_scores, expected_heads)
        torch.testing.assert_close(layer.mlp_scores, standardized(mlp))
        torch.testing.assert_close(layer.attention_mean, o_in.double().mean(0))


def test_ranking_keeps_the_best_units_closest_to_the_target_weight():
    scores = torch.tensor([0.5, 2.0, -1.0, 1.0, 0.0])
    weights = torch.tensor([1.0, 3.0, 1.0, 1.0, 4.0])
    # best first: 2.0 (3), 1.0 (1), 0.5 (1), 0.0 (4), -1.0 (1); kept weight 0, 3, 4, 5, 9, 10
    # 60% of 10 = 6: the prefix of weight 5 is closest
    assert keep_closest_to(scores, weights, 0.4).tolist() == [True, True, False, True, False]
    assert keep_closest_to(scores, weights, 0.0).all()
    assert not keep_closest_to(scores, weights, 0.99).any()


def test_heads_and_channels_of_all_layers_compete_in_one_ranking(fresh_tiny, fixed_calibration):
    """A layer whose MLP channels all score far above everything keeps all of them, and
    the removal falls on the other units: the allocation is adaptive, not per layer."""
    model, windows = fresh_tiny.model, fixed_calibration().windows(None)
    stats = dense_layer_stats(model, windows)
    stats[1].mlp_scores = stats[1].mlp_scores + 100
    masks = adaptive_masks(model, stats, 0.4)
    assert masks[1][1].all()
    assert not masks[0][1].all()


@pytest.mark.parametrize("ratio", [0.1, 0.3, 0.5, 0.8])
def test_achieved_reduction_is_the_ratio_within_half_a_unit(fresh_tiny, ratio, fixed_calibration):
    """Removed block-linear weights = R · all of them, to within half the largest unit
    (a key/value group: 2·(2+1)·16·64 = 6144 weights; an MLP channel: 3·64 = 192)."""
    model = fresh_tiny.model
    before, total = linear_weights(model), dense_numel(model)
    group, _ = unit_parameters(decoder_layers(model)[0])

    footprint = compress(model, Spec.parse(f"flap:{ratio}"), fixed_calibration())

    removed = before - linear_weights(model)
    assert abs(removed - ratio * before) <= group / 2
    biases = sum(2 * 64 for _ in decoder_layers(model))
    assert dense_numel(model) == total - removed + biases
    assert footprint.relative_size == pytest.approx(dense_numel(model) / total)


def test_bias_compensation_keeps_each_projections_mean_output(fresh_tiny, fixed_calibration):
    """On the dense inputs of the calibration data, every pruned o_proj and down_proj
    outputs on average what the dense one did (the removed channels' mean, folded)."""
    model, windows = fresh_tiny.model, fixed_calibration().windows(None)
    dense_blocks = list(iterate_blocks(model, windows))
    block_inputs = [inputs for _, _, inputs in dense_blocks]
    mlp_inputs = inputs_of(model, windows, "mlp")

    def mean_outputs(block, inputs, mlp_input):
        caught = []
        handle = block.self_attn.o_proj.register_forward_hook(
            lambda _m, _a, out: caught.append(out)
        )
        run_block(block, inputs)
        handle.remove()
        attention = torch.cat(caught).reshape(-1, 64).double().mean(0)
        return attention, block.mlp(mlp_input).double().mean(0)

    with torch.no_grad():
        dense = [
            mean_outputs(b, i, m)
            for b, i, m in zip(decoder_layers(model), block_inputs, mlp_inputs)
        ]
        compress(model, Spec.parse("flap:0.5"), fixed_calibration())
        assert any(block.self_attn.o_proj.in_features < 64 for block in decoder_layers(model))
        assert all(block.mlp.down_proj.in_features < 128 for block in decoder_layers(model))
        for block, inputs, mlp_input, (attention, mlp) in zip(
            decoder_layers(model), block_inputs, mlp_inputs, dense
        ):
            pruned_attention, pruned_mlp = mean_outputs(block, inputs, mlp_input)
            torch.testing.assert_close(pruned_attention, attention, rtol=0, atol=1e-4)
            torch.testing.assert_close(pruned_mlp, mlp, rtol=0, atol=1e-4)


def test_flap_really_narrows_tiny_llama_and_restores_exactly(fresh_tiny, fixed_calibration):
    model = fresh_tiny.model
    snapshot, original = Snapshot(model), state_dict_hash(model)
    architecture = [(name, tuple(t.shape)) for name, t in model.state_dict().items()]

    compress(model, Spec.parse("flap:0.5"), fixed_calibration())

    config = model.config
    for index, block in enumerate(decoder_layers(model)):
        heads, kv = (
            config.num_attention_heads_per_layer[index],
            config.num_key_value_heads_per_layer[index],
        )
        channels = config.intermediate_size_per_layer[index]
        if kv:
            attention = block.self_attn
            assert attention.q_proj.weight.shape == (heads * 16, 64)
            assert attention.k_proj.weight.shape == attention.v_proj.weight.shape == (kv * 16, 64)
        assert block.self_attn.o_proj.weight.shape == (64, heads * 16)
        assert block.self_attn.o_proj.bias.shape == block.mlp.down_proj.bias.shape == (64,)
        assert block.mlp.up_proj.weight.shape == block.mlp.gate_proj.weight.shape == (channels, 64)
        assert block.mlp.down_proj.weight.shape == (64, channels)
    ids = torch.arange(2, 2 + 24).reshape(2, 12)
    with torch.no_grad():
        assert torch.isfinite(model(ids, use_cache=False).logits).all()

    snapshot.restore(model)
    assert state_dict_hash(model) == original
    assert [(name, tuple(t.shape)) for name, t in model.state_dict().items()] == architecture
    assert not hasattr(model.config, "intermediate_size_per_layer")


def test_a_layer_without_heads_outputs_its_bias_and_generates_with_a_cache(
    fresh_tiny, fixed_calibration
):
    model, windows = fresh_tiny.model, fixed_calibration().windows(None)
    stats = dense_layer_stats(model, windows)
    block = decoder_layers(model)[0]
    prune_attention(block, torch.zeros(2, dtype=torch.bool), stats[0].attention_mean)
    prune_mlp(block, torch.zeros(128, dtype=torch.bool), stats[0].mlp_mean)
    assert isinstance(block.self_attn, EmptyAttention)
    inputs = capture_layer0_inputs(model, windows[:2])
    with torch.no_grad():
        attention, _ = block.self_attn(inputs.hidden)
        torch.testing.assert_close(attention, block.self_attn.o_proj.bias.expand_as(attention))
        mlp = block.mlp(inputs.hidden)
        torch.testing.assert_close(mlp, block.mlp.down_proj.bias.expand_as(mlp))
        ids = torch.arange(2, 10)[None]
        cached = model.generate(ids, max_new_tokens=6, do_sample=False, use_cache=True)
        uncached = model.generate(ids, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
