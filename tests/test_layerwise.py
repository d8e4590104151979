"""The layerwise engine: what each block sees, what statistics see, and no hooks left behind."""

from __future__ import annotations

import pytest
import torch

from mpt_core.engine import layerwise
from mpt_core.engine.layerwise import (
    block_linear_names,
    capture_layer0_inputs,
    collect_stats,
    compress_layerwise,
    decoder_layers,
    iterate_blocks,
    linear_layers,
    module_name,
)
from mpt_core.models import state_dict_hash

pytestmark = pytest.mark.usefixtures("one_thread")

NSAMPLES, SEQLEN = 11, 32  # 11 = a full batch of CALIBRATION_BATCH (8) and a ragged one


@pytest.fixture
def windows():
    generator = torch.Generator().manual_seed(0)
    return torch.randint(2, 258, (NSAMPLES, SEQLEN), generator=generator)


def hooks_left(model) -> int:
    return sum(
        len(module._forward_hooks) + len(module._forward_pre_hooks) for module in model.modules()
    )


@torch.no_grad()
def block_inputs_of_full_forward(model, windows) -> list[torch.Tensor]:
    """The hidden states each decoder layer receives in one ordinary forward pass."""
    seen: dict[int, torch.Tensor] = {}
    handles = []
    for index, block in enumerate(decoder_layers(model)):

        def catch(_module, args, kwargs, index=index):
            seen[index] = (args[0] if args else kwargs["hidden_states"]).clone()

        handles.append(block.register_forward_pre_hook(catch, with_kwargs=True))
    try:
        model(windows, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return [seen[i] for i in range(len(seen))]


def test_capture_batches_match_the_full_forward(tiny, windows):
    assert NSAMPLES > layerwise.CALIBRATION_BATCH
    captured = capture_layer0_inputs(tiny.model, windows)
    expected = block_inputs_of_full_forward(tiny.model, windows)[0]
    assert captured.hidden.shape == (NSAMPLES, SEQLEN, 64)
    torch.testing.assert_close(captured.hidden, expected, rtol=0, atol=1e-5)
    assert hooks_left(tiny.model) == 0


def test_noop_compressor_blocks_see_the_full_forward_inputs(tiny, windows):
    model = tiny.model
    expected = block_inputs_of_full_forward(model, windows)
    assert len(expected) == 2
    seen = []
    for index, block, inputs in iterate_blocks(model, windows):
        assert block is decoder_layers(model)[index]
        seen.append(inputs.hidden.clone())
    assert len(seen) == len(expected)
    for index, (got, want) in enumerate(zip(seen, expected, strict=True)):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5, msg=f"block {index}")
    assert hooks_left(model) == 0


def test_later_blocks_see_the_compressed_activations(fresh_tiny, windows):
    """After block 0 is compressed, block 1 must see the compressed model's activations."""
    model = fresh_tiny.model
    seen = {}
    for index, block, inputs in iterate_blocks(model, windows):
        seen[index] = inputs.hidden.clone()
        if index == 0:
            with torch.no_grad():
                block.mlp.down_proj.weight.mul_(0.0)
    expected = block_inputs_of_full_forward(model, windows)
    torch.testing.assert_close(seen[1], expected[1], rtol=0, atol=1e-5)
    assert not torch.allclose(seen[1], seen[0], atol=1e-3)


class TokenCounter:
    """Statistics that count the calibration tokens a linear layer sees, and sum its inputs."""

    def __init__(self, linear):
        self.tokens = 0
        self.batches = 0
        self.in_features = linear.in_features
        self.total = torch.zeros(linear.in_features, dtype=torch.float64)

    def add_batch(self, inp, out):
        assert inp.shape[-1] == self.in_features
        self.tokens += inp.reshape(-1, inp.shape[-1]).shape[0]
        self.batches += 1
        self.total += inp.reshape(-1, inp.shape[-1]).double().sum(0)


def test_statistics_hooks_see_every_calibration_token(tiny, windows):
    model = tiny.model
    counted = {}
    for index, block, inputs in iterate_blocks(model, windows):
        stats = collect_stats(block, inputs, lambda _site, linear: TokenCounter(linear), index)
        assert set(stats) == set(linear_layers(block)) and len(stats) == 7
        for name, counter in stats.items():
            assert counter.tokens == NSAMPLES * SEQLEN, (index, name)
            assert counter.batches == 2  # 11 samples in batches of 8
            counted[(index, name)] = counter
        assert hooks_left(model) == 0
    # q, k and v read the same normalized input, so their statistics agree
    for index in range(2):
        q, k, v = (counted[(index, f"self_attn.{p}_proj")].total for p in "qkv")
        torch.testing.assert_close(q, k)
        torch.testing.assert_close(q, v)


def test_hooks_are_removed_when_statistics_fail(tiny, windows):
    class Exploding:
        def add_batch(self, inp, out):
            raise RuntimeError("boom")

    model = tiny.model
    index, block, inputs = next(iterate_blocks(model, windows))
    with pytest.raises(RuntimeError, match="boom"):
        collect_stats(block, inputs, lambda _site, _linear: Exploding(), index)
    assert hooks_left(model) == 0


def test_hooks_are_removed_when_capture_fails(fresh_tiny, windows):
    model = fresh_tiny.model
    with pytest.raises(IndexError):  # a token id outside the vocabulary
        capture_layer0_inputs(model, windows + 1000)
    assert hooks_left(model) == 0


def test_compress_layerwise_noop_covers_every_linear_and_changes_nothing(tiny, windows):
    from mpt_core.storage import TensorStorage

    model = tiny.model
    before = state_dict_hash(model)
    calls = []

    def compress(site, linear, stats):
        assert stats.tokens == NSAMPLES * SEQLEN
        assert linear is model.get_submodule(site.path)
        calls.append(site.weight)
        return TensorStorage(value_bits=8)

    storage = compress_layerwise(
        model, windows, lambda _site, linear: TokenCounter(linear), compress
    )
    assert sorted(storage) == sorted(block_linear_names(model))
    assert sorted(calls) == sorted(storage) and all(s.value_bits == 8 for s in storage.values())
    assert state_dict_hash(model) == before
    assert hooks_left(model) == 0


def _block1_input_totals(model, windows, compress, propagate):
    totals = {}

    def keep(site, linear, stats):
        totals[site.weight] = stats.total.clone()
        return compress(linear)

    compress_layerwise(model, windows, lambda _s, linear: TokenCounter(linear), keep, propagate)
    return {key: value for key, value in totals.items() if key.startswith(module_name(1))}


def test_dense_propagation_feeds_each_block_the_dense_activations(fresh_tiny, windows):
    from mpt_core.storage import TensorStorage

    model = fresh_tiny.model

    def noop(_linear):
        return TensorStorage()

    def halve(linear):
        linear.weight.data.mul_(0.5)
        return TensorStorage()

    before = state_dict_hash(model)
    dense = _block1_input_totals(model, windows, noop, "compressed")
    assert state_dict_hash(model) == before
    seen_dense = _block1_input_totals(model, windows, halve, "dense")
    for key, total in dense.items():
        torch.testing.assert_close(seen_dense[key], total)


def test_dense_propagation_differs_from_compressed_once_a_block_changes(fresh_tiny, windows):
    from mpt_core.storage import TensorStorage

    model = fresh_tiny.model
    dense = _block1_input_totals(model, windows, lambda _l: TensorStorage(), "compressed")

    def halve(linear):
        linear.weight.data.mul_(0.5)
        return TensorStorage()

    seen = _block1_input_totals(model, windows, halve, "compressed")
    assert any(not torch.allclose(seen[key], dense[key]) for key in dense)


def test_a_bad_propagation_is_refused(tiny, windows):
    with pytest.raises(ValueError, match="propagate"):
        next(iterate_blocks(tiny.model, windows, "sideways"))
