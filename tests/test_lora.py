"""LoRA fine-tuning (mpt_core.engine.lora): the adapter forward, an exact merge, training that
lowers the loss, and a model that is its own architecture again afterwards."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mpt_core.engine.lora import (
    MLP_PROJECTIONS,
    Budget,
    LoRALinear,
    add_adapters,
    finetune,
    lora_finetune,
    merge_adapters,
    training_chunks,
)
from mpt_core.models import state_dict_hash
from mpt_core.pipeline import resolved_settings
from mpt_core.spec import Spec

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = (
    "the cat sat on the mat and the dog sat on the log; the cat saw the dog and the dog "
    "saw the cat. "
) * 12


def text_windows(tokenizer, seqlen: int = 64) -> torch.Tensor:
    ids = tokenizer(TEXT, return_tensors="pt").input_ids[0]
    usable = len(ids) // seqlen * seqlen
    return ids[:usable].reshape(-1, seqlen)


def mean_loss(model, windows: torch.Tensor) -> float:
    with torch.no_grad():
        return model(windows, labels=windows, use_cache=False).loss.item()


def logits_of(model) -> torch.Tensor:
    ids = torch.arange(2, 2 + 24).reshape(2, 12)
    with torch.no_grad():
        return model(ids, use_cache=False).logits


def test_adapter_forward_is_base_plus_scaled_low_rank_update():
    torch.manual_seed(0)
    base = nn.Linear(12, 8, bias=True)
    adapter = LoRALinear(base, rank=3, alpha=6).eval()
    with torch.no_grad():
        adapter.lora_B.normal_()
    x = torch.randn(5, 12)
    expected = base(x) + 2.0 * (x @ adapter.lora_A.T @ adapter.lora_B.T)
    torch.testing.assert_close(adapter(x), expected)
    torch.testing.assert_close(adapter.delta(), 2.0 * adapter.lora_B @ adapter.lora_A)


def test_fresh_adapters_leave_the_model_unchanged(fresh_tiny):
    """B starts at zero (as PEFT), so training starts from the model itself."""
    model = fresh_tiny.model
    before = logits_of(model)
    adapters = add_adapters(model, rank=4)
    assert len(adapters) == 2 * 7
    torch.testing.assert_close(logits_of(model), before, rtol=0, atol=0)


def test_merge_gives_the_adapter_forward_and_the_original_architecture(fresh_tiny):
    model = fresh_tiny.model
    names = [name for name, _ in model.named_modules()]
    adapters = add_adapters(model, rank=4)
    with torch.no_grad():
        for adapter in adapters.values():
            adapter.lora_B.normal_(std=0.05)
    with_adapters = logits_of(model)

    storage = merge_adapters(model)

    torch.testing.assert_close(logits_of(model), with_adapters, rtol=0, atol=1e-5)
    assert [name for name, _ in model.named_modules()] == names
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert set(storage) == {f"{name}.weight" for name in adapters}


def test_only_the_chosen_projections_get_adapters(fresh_tiny):
    adapters = add_adapters(fresh_tiny.model, rank=2, targets=MLP_PROJECTIONS)
    assert sorted(name.rsplit(".", 1)[1] for name in adapters) == sorted(MLP_PROJECTIONS * 2)


def test_training_lowers_the_calibration_loss(fresh_tiny):
    model = fresh_tiny.model
    windows = text_windows(fresh_tiny.tokenizer)
    before = mean_loss(model, windows)
    lora_finetune(model, windows, Budget(steps=60, rank=8, lr=3e-3))
    after = mean_loss(model, windows)
    assert after < 0.9 * before, (before, after)
    assert not model.training


def test_only_the_adapters_train(fresh_tiny):
    model = fresh_tiny.model
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    add_adapters(model, rank=2)
    losses = finetune(model, text_windows(fresh_tiny.tokenizer), Budget(steps=3, rank=2, lr=1e-2))
    assert len(losses) == 3
    after = {n.replace(".base.", "."): p for n, p in model.named_parameters() if "lora_" not in n}
    assert after.keys() == before.keys()
    assert all(torch.equal(after[name], before[name]) for name in before)
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)


def test_training_restores_the_parameter_flags(fresh_tiny):
    model = fresh_tiny.model
    model.model.embed_tokens.weight.requires_grad_(False)
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    lora_finetune(model, text_windows(fresh_tiny.tokenizer), Budget(steps=2, rank=2, lr=1e-2))
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags


def test_training_is_seeded_and_leaves_the_callers_random_state(tiny):
    windows = text_windows(tiny.tokenizer)
    results = []
    for _ in range(2):
        model = copy.deepcopy(tiny.model)
        state = torch.random.get_rng_state()
        lora_finetune(model, windows, Budget(steps=4, rank=2, lr=1e-2, seed=3))
        assert torch.equal(torch.random.get_rng_state(), state)
        results.append(state_dict_hash(model))
    assert results[0] == results[1]


def test_windows_are_cut_into_chunks_of_128_tokens():
    windows = torch.arange(3 * 300).reshape(3, 300)
    chunks = training_chunks(windows)
    assert chunks.shape == (6, 128)
    assert torch.equal(chunks[2], windows[1, :128])
    assert training_chunks(windows[:, :16]).shape == (3, 16)


def test_the_budget_is_recorded_with_the_result():
    settings = resolved_settings(Spec.parse("llm_pruner:0.2[recover=lora,steps=50]"))[0]
    assert (settings["recover"], settings["steps"], settings["rank"], settings["lr"]) == (
        "lora",
        50,
        8,
        3e-4,
    )
