"""Low-rank methods: the key equations, real factorized storage, exact restore."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mpt_core.engine.layerwise import LinearSite, block_linear_names, decoder_layers, linear_layers
from mpt_core.errors import SpecError
from mpt_core.lowrank import asvd as asvd_module
from mpt_core.lowrank.asvd import (
    activation_scales,
    asvd_factors,
    asvd_rank,
    search_ratios,
    sensitivity,
)
from mpt_core.lowrank.factorized import (
    LowRankLinear,
    rank_for_ratio,
    replace_linear,
    truncated_svd,
)
from mpt_core.lowrank.svd_llm import Gram, whitened_svd, whitening_factor
from mpt_core.models import state_dict_hash
from mpt_core.pipeline import compress
from mpt_core.snapshot import Snapshot
from mpt_core.spec import Spec
from mpt_core.storage import dense_numel


def correlated_inputs(n: int, tokens: int, seed: int = 0) -> torch.Tensor:
    """Inputs (tokens × n) with very unequal, correlated channels, as LLM activations are."""
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(n, n, generator=generator, dtype=torch.float64)
    scales = torch.logspace(0, 2, n, dtype=torch.float64)
    return torch.randn(tokens, n, generator=generator, dtype=torch.float64) * scales @ mixing


def logits_of(model) -> torch.Tensor:
    ids = torch.arange(2, 2 + 24).reshape(2, 12)
    with torch.no_grad():
        return model(ids, use_cache=False).logits


@pytest.mark.parametrize("rank", [1, 5, 17, 23])
def test_svd_llm_truncation_loss_equals_discarded_singular_values(rank):
    """Theorem 3.1 of SVD-LLM: ‖W X − W' X‖_F² = Σ_{i>k} σ_i² of W·S (X Xᵀ = S Sᵀ)."""
    generator = torch.Generator().manual_seed(1)
    W = torch.randn(24, 40, generator=generator, dtype=torch.float64)
    X = correlated_inputs(40, 300)
    S = whitening_factor(X.T @ X)
    u, vt, sigma = whitened_svd(W, S, rank)
    loss = torch.linalg.norm(X @ W.T - X @ (u @ vt).T)
    discarded = sigma[rank:].square().sum().sqrt().item()
    assert loss.item() == pytest.approx(discarded, rel=1e-8, abs=1e-9 * sigma[0].item())


def test_svd_llm_dropping_one_singular_value_costs_exactly_that_value():
    """The paper's per-value statement: removing only σ_i loses exactly σ_i."""
    generator = torch.Generator().manual_seed(2)
    W = torch.randn(16, 20, generator=generator, dtype=torch.float64)
    X = correlated_inputs(20, 200, seed=3)
    S = whitening_factor(X.T @ X)
    U, sigma, Vt = torch.linalg.svd(W @ S, full_matrices=False)
    for i in (0, 7, 15):
        kept = sigma.clone()
        kept[i] = 0
        W_i = U @ torch.diag(kept) @ Vt @ torch.linalg.inv(S)
        loss = torch.linalg.norm(X @ (W - W_i).T)
        assert loss.item() == pytest.approx(sigma[i].item(), rel=1e-8)


def test_whitening_beats_plain_svd_on_the_calibration_outputs():
    generator = torch.Generator().manual_seed(4)
    W = torch.randn(32, 48, generator=generator, dtype=torch.float64)
    X = correlated_inputs(48, 400, seed=5)
    u, vt, _ = whitened_svd(W, whitening_factor(X.T @ X), 8)
    pu, pvt = truncated_svd(W, 8)
    whitened = torch.linalg.norm(X @ (W - u @ vt).T)
    plain = torch.linalg.norm(X @ (W - pu @ pvt).T)
    assert whitened < 0.9 * plain


def test_gram_accumulates_xtx_over_batches():
    X = torch.randn(3, 10, 6)
    gram = Gram(6, "cpu")
    gram.add_batch(X[:2], None)
    gram.add_batch(X[2:], None)
    flat = X.reshape(-1, 6)
    torch.testing.assert_close(gram.XXt, flat.T @ flat)


def test_rank_deficient_gram_is_shifted_not_fatal():
    X = correlated_inputs(12, 5)  # fewer tokens than channels: X Xᵀ is singular
    S = whitening_factor(X.T @ X)
    assert torch.isfinite(S).all()
    assert torch.allclose(S @ S.T, X.T @ X, atol=1e-4 * (X.T @ X).abs().max())


def test_full_rank_svd_reproduces_the_matrix():
    W = torch.randn(24, 40, dtype=torch.float64)
    u, vt = truncated_svd(W, 24)
    torch.testing.assert_close(u @ vt, W, rtol=0, atol=1e-12)


@pytest.mark.parametrize("ratio", [0.1, 0.3, 0.5, 0.6])
@pytest.mark.parametrize("shape", [(64, 64), (128, 64), (576, 1536)])
def test_rank_meets_the_parameter_budget(ratio, shape):
    m, n = shape
    k = rank_for_ratio(m, n, ratio)
    assert k * (m + n) <= (1 - ratio) * m * n < (k + 1) * (m + n)


@pytest.mark.parametrize("method", ["svd", "svd_llm"])
def test_ratio_zero_keeps_the_dense_layers(fresh_tiny, method, fixed_calibration):
    model = fresh_tiny.model
    before = logits_of(model)
    compress(model, Spec.parse(f"{method}:0.0"), fixed_calibration())
    assert not any(isinstance(m, LowRankLinear) for m in model.modules())
    torch.testing.assert_close(logits_of(model), before, rtol=0, atol=0)


@pytest.mark.parametrize("method", ["svd", "svd_llm"])
def test_factorized_layers_really_store_fewer_parameters(fresh_tiny, method, fixed_calibration):
    """svd_llm:0.3 on tiny-llama: every block linear becomes k·(m + n) ≤ 0.7·m·n parameters
    (rank rounded down, so the saving is at least 30% and under 30% + (m + n)/(m·n))."""
    model = fresh_tiny.model
    shapes = {
        f"{index}.{name}": tuple(linear.weight.shape)
        for index, block in enumerate(decoder_layers(model))
        for name, linear in linear_layers(block).items()
    }
    total_before = dense_numel(model)
    snapshot, original_hash = Snapshot(model), state_dict_hash(model)

    footprint = compress(model, Spec.parse(f"{method}:0.3"), fixed_calibration())

    removed = 0
    for key, (m, n) in shapes.items():
        index, name = key.split(".", 1)
        layer = decoder_layers(model)[int(index)].get_submodule(name)
        k = rank_for_ratio(m, n, 0.3)
        assert isinstance(layer, LowRankLinear)
        assert (layer.u.weight.shape, layer.vt.weight.shape) == ((m, k), (k, n))
        assert 0.3 * m * n <= m * n - k * (m + n) < 0.3 * m * n + m + n
        removed += m * n - k * (m + n)
    assert dense_numel(model) == total_before - removed
    assert footprint.relative_size == pytest.approx((total_before - removed) / total_before)
    assert footprint.compressed_numel == sum(
        k * (m + n) for m, n in shapes.values() for k in [rank_for_ratio(m, n, 0.3)]
    )
    assert torch.isfinite(logits_of(model)).all()

    snapshot.restore(model)
    assert state_dict_hash(model) == original_hash
    assert all(type(m) is not LowRankLinear for m in model.modules())
    assert block_linear_names(model) == [f"model.layers.{k}.weight" for k in shapes]


def test_svd_llm_beats_plain_svd_on_the_calibration_data(fresh_tiny, fixed_calibration):
    """The whitened factorization reproduces the model's outputs on the calibration
    windows better than the plain one at the same rank."""
    model = fresh_tiny.model
    calibration = fixed_calibration(nsamples=16)
    windows = calibration.windows(None)
    with torch.no_grad():
        dense = model(windows).logits
    snapshot = Snapshot(model)
    errors = {}
    for method in ("svd", "svd_llm"):
        compress(model, Spec.parse(f"{method}:0.4"), calibration)
        with torch.no_grad():
            errors[method] = (model(windows).logits - dense).square().mean().item()
        snapshot.restore(model)
    assert errors["svd_llm"] < errors["svd"]


def test_low_rank_linear_keeps_the_bias():
    linear = nn.Linear(10, 6)
    u, vt = truncated_svd(linear.weight.detach(), 6)
    factorized = LowRankLinear(u.float(), vt.float(), linear.bias)
    x = torch.randn(3, 10)
    torch.testing.assert_close(factorized(x), linear(x), rtol=1e-5, atol=1e-5)


# ASVD


def test_asvd_without_scaling_is_plain_svd():
    W = torch.randn(24, 40, dtype=torch.float64)
    u, vt = asvd_factors(W, torch.rand(40) + 0.5, alpha=0.0, rank=7)
    pu, pvt = truncated_svd(W, 7)
    torch.testing.assert_close(u @ vt, pu @ pvt, rtol=0, atol=1e-5)


def test_asvd_factors_are_the_truncated_svd_of_the_scaled_matrix():
    W = torch.randn(24, 40, dtype=torch.float64)
    scale = torch.rand(40) * 10
    u, vt = asvd_factors(W, scale, alpha=0.5, rank=7)
    s = scale.double() ** 0.5 + 1e-6
    best_u, best_vt = truncated_svd(W * s, 7)
    torch.testing.assert_close(u @ vt * s, best_u @ best_vt, rtol=0, atol=1e-10)


def test_asvd_scaling_protects_outlier_channels():
    """With a few input channels carrying large activations (LLM outliers), scaling by
    mean |X|^0.5 before the SVD reproduces the layer's outputs better than plain SVD."""
    generator = torch.Generator().manual_seed(6)
    W = torch.randn(48, 64, generator=generator, dtype=torch.float64)
    X = torch.randn(500, 64, generator=generator, dtype=torch.float64)
    X[:, :4] *= 30
    u, vt = asvd_factors(W, X.abs().mean(0), alpha=0.5, rank=12)
    pu, pvt = truncated_svd(W, 12)
    assert torch.linalg.norm(X @ (W - u @ vt).T) < 0.7 * torch.linalg.norm(X @ (W - pu @ pvt).T)


def test_asvd_search_takes_the_least_harmful_pairs_within_the_budget():
    numel = {"a": 100, "b": 100, "c": 200}
    pairs = [  # (layer, kept ratio, calibration loss with only that pair applied)
        ("a", 0.4, 9.0), ("a", 0.6, 5.0), ("a", 0.8, 2.0),
        ("b", 0.4, 3.0), ("b", 0.6, 1.5), ("b", 0.8, 1.0),
        ("c", 0.4, 8.0), ("c", 0.6, 4.0), ("c", 0.8, 1.2),
    ]  # fmt: skip
    ratios = search_ratios(pairs, numel, target=0.6)
    kept = sum(numel[layer] * ratio for layer, ratio in ratios.items()) / 400
    assert kept <= 0.6
    # pairs with loss <= 3.0 are below the cut: a 0.8, b 0.4, c 0.8 -> 0.70 > 0.6;
    # with 4.0 also: c 0.6 -> 0.60
    assert ratios == {"a": 0.8, "b": 0.4, "c": 0.6}
    with pytest.raises(SpecError):
        search_ratios(pairs, numel, target=0.3)


def test_asvd_sensitivity_is_the_models_loss_with_one_layer_factorized(
    fresh_tiny, fixed_calibration
):
    model = fresh_tiny.model
    windows = fixed_calibration(nsamples=4).windows(None)
    scales = activation_scales(model, windows)
    pairs = sensitivity(model, windows, scales, alpha=0.5)
    assert len(pairs) == 2 * 7 * 6
    (index, name), ratio, loss = pairs[9]
    block = decoder_layers(model)[index]
    original = block.get_submodule(name)
    u, vt = asvd_factors(original.weight, scales[index, name], 0.5, asvd_rank(original, ratio))
    replace_linear(model, LinearSite(index, name), u, vt)
    with torch.no_grad():
        logits = model(windows, use_cache=False).logits[:, :-1]
    nll = F.cross_entropy(logits.flatten(0, 1), windows[:, 1:].flatten(), reduction="sum")
    assert loss == pytest.approx(nll.item(), rel=1e-5)


def test_asvd_meets_the_budget_and_restores(fresh_tiny, fixed_calibration):
    model = fresh_tiny.model
    linears = sum(model.get_parameter(name).numel() for name in block_linear_names(model))
    total = dense_numel(model)
    snapshot, original_hash = Snapshot(model), state_dict_hash(model)
    compress(model, Spec.parse("asvd:0.3[nsamples=4]"), fixed_calibration())
    factorized = [m for m in model.modules() if isinstance(m, LowRankLinear)]
    assert factorized
    assert total - dense_numel(model) >= 0.3 * linears - sum(
        m.in_features + m.out_features for m in factorized
    )
    assert torch.isfinite(logits_of(model)).all()
    snapshot.restore(model)
    assert state_dict_hash(model) == original_hash


def test_asvd_sensitivity_is_computed_once_per_dense_model_and_matches_a_fresh_search(
    fresh_tiny, monkeypatch, fixed_calibration
):
    """Two ratios of one restored model share the sensitivity table; changed weights do
    not; and a cached run gives the very weights a fresh run gives."""
    model = fresh_tiny.model
    snapshot, calibration = Snapshot(model), fixed_calibration(nsamples=4)
    calls = []
    real = asvd_module.sensitivity
    monkeypatch.setattr(asvd_module, "sensitivity", lambda *a: calls.append(1) or real(*a))
    asvd_module._STATISTICS.clear()
    compress(model, Spec.parse("asvd:0.2[nsamples=4]"), calibration)
    snapshot.restore(model)
    compress(model, Spec.parse("asvd:0.3[nsamples=4]"), calibration)
    cached = state_dict_hash(model)
    assert len(calls) == 1
    asvd_module._STATISTICS.clear()
    snapshot.restore(model)
    compress(model, Spec.parse("asvd:0.3[nsamples=4]"), calibration)
    assert state_dict_hash(model) == cached and len(calls) == 2
    snapshot.restore(model)
    with torch.no_grad():
        decoder_layers(model)[0].mlp.down_proj.weight.mul_(0.5)
    compress(model, Spec.parse("asvd:0.3[nsamples=4]"), calibration)
    assert len(calls) == 3
