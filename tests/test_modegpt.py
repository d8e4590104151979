"""MoDeGPT: each module's decomposition against a hand computation, the allocation against its
optimality condition, the compressed model's size, output and exact restore."""

from __future__ import annotations

import copy

import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mpt_core.engine.layerwise import block_linear_names, decoder_layers
from mpt_core.errors import SpecError
from mpt_core.lowrank.modegpt import (
    DecomposedAttention,
    allocate_sparsity,
    compress_attention,
    compress_mlp,
    nystrom_mlp,
    pair_scores,
    ridge_leverage_scores,
    rope_dimensions,
    value_output_svd,
    widths,
)
from mpt_core.models import state_dict_hash
from mpt_core.pipeline import compress
from mpt_core.snapshot import Snapshot
from mpt_core.spec import Spec

pytestmark = pytest.mark.usefixtures("one_thread")
SETTINGS = settings(max_examples=15, deadline=None)


def activations(tokens: int, width: int, seed: int) -> torch.Tensor:
    """Correlated activations with very unequal channels, as LLM activations are."""
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(width, width, generator=generator, dtype=torch.float64)
    scales = torch.logspace(0, 1.5, width, dtype=torch.float64)
    return torch.randn(tokens, width, generator=generator, dtype=torch.float64) * scales @ mixing


# ------------------------------------------------------------------------ Type I: Nyström


@SETTINGS
@given(width=st.integers(4, 24), seed=st.integers(0, 10_000), ridge=st.floats(1e-4, 1.0))
def test_ridge_leverage_scores_are_the_diagonal_of_the_ridge_projection(width, seed, ridge):
    H = activations(3 * width, width, seed)
    C = H.T @ H
    lam = ridge * C.diagonal().mean()
    expected = torch.diagonal(C @ torch.linalg.inv(C + lam * torch.eye(width, dtype=C.dtype)))
    torch.testing.assert_close(ridge_leverage_scores(C, ridge), expected, rtol=1e-7, atol=1e-9)
    # s_i ∈ [0, 1] and Σ s_i is the effective dimension tr(C (C + λI)⁻¹)
    assert ridge_leverage_scores(C, ridge).min() >= 0
    assert ridge_leverage_scores(C, ridge).max() <= 1 + 1e-9


@SETTINGS
@given(inner=st.integers(6, 24), d=st.integers(3, 10), seed=st.integers(0, 10_000), data=st.data())
def test_nystrom_down_projection_is_the_least_squares_fit_on_the_kept_channels(
    inner, d, seed, data
):
    k = data.draw(st.integers(1, inner))
    generator = torch.Generator().manual_seed(seed)
    H = activations(4 * inner, inner, seed)  # intermediate activations (tokens × D)
    W_gate, W_up = (torch.randn(inner, d, generator=generator, dtype=torch.float64) for _ in "gu")
    W_down = torch.randn(d, inner, generator=generator, dtype=torch.float64)
    C = H.T @ H
    gate, up, down = nystrom_mlp(W_gate, W_up, W_down, C, k, ridge=1e-2)

    keep = ridge_leverage_scores(C, 1e-2).topk(k).indices.sort().values
    torch.testing.assert_close(gate, W_gate[keep])
    torch.testing.assert_close(up, W_up[keep])
    # min_B ‖H W_Dᵀ − H_J Bᵀ‖: the paper's (S_kᵀ C S_k)⁺ S_kᵀ C W_D
    best = torch.linalg.lstsq(H[:, keep], H @ W_down.T).solution.T
    torch.testing.assert_close(down, best, rtol=1e-6, atol=1e-8)


def test_nystrom_at_full_width_reproduces_the_mlp():
    H = activations(200, 16, seed=1)
    W_down = torch.randn(8, 16, dtype=torch.float64)
    W = torch.randn(16, 8, dtype=torch.float64)
    gate, up, down = nystrom_mlp(W, W, W_down, H.T @ H, 16, ridge=1e-2)
    torch.testing.assert_close(H @ down.T, H @ W_down.T, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(gate, W)


def test_ridge_leverage_prefers_the_channels_that_carry_the_signal():
    H = activations(300, 12, seed=2)
    H[:, [3, 7]] *= 1e-3  # two nearly silent channels
    scores = ridge_leverage_scores(H.T @ H, 1e-2)
    assert set(scores.topk(10).indices.tolist()) == set(range(12)) - {3, 7}


# ------------------------------------------------------------------ Type II: CR decomposition


@SETTINGS
@given(half=st.integers(1, 6), groups=st.integers(1, 3), seed=st.integers(0, 10_000))
def test_pair_scores_equal_the_cr_bound_from_the_matrix_square_roots(half, groups, seed):
    """‖C_q^{1/2}[:, J]‖_F · ‖C_k^{1/2}[:, J]‖_F for J = {j, j + d_h/2}, summed over the query
    heads of the key head, computed with scipy's sqrtm."""
    head_dim = 2 * half
    queries = [activations(50, head_dim, seed + h) for h in range(groups)]
    keys = activations(50, head_dim, seed + 99)
    C_k = keys.T @ keys
    root_k = torch.from_numpy(scipy.linalg.sqrtm(C_k.numpy()).real)
    expected = torch.zeros(half, dtype=torch.float64)
    for Q in queries:
        root_q = torch.from_numpy(scipy.linalg.sqrtm((Q.T @ Q).numpy()).real)
        for j in range(half):
            J = [j, j + half]
            expected[j] += torch.linalg.norm(root_q[:, J]) * torch.linalg.norm(root_k[:, J])
    query_energy = torch.stack([(Q.T @ Q).diagonal() for Q in queries])
    scores = pair_scores(query_energy, C_k.diagonal())
    torch.testing.assert_close(scores, expected, rtol=1e-6, atol=1e-8)


def test_rope_dimensions_keep_whole_pairs_in_rotary_order():
    scores = torch.tensor([0.1, 5.0, 0.3, 4.0])  # head_dim 8, pairs (j, j + 4)
    assert rope_dimensions(scores, 2).tolist() == [1, 3, 5, 7]
    assert rope_dimensions(scores, 4).tolist() == list(range(8))


def position_tables(model, tokens: int):
    hidden = torch.zeros(1, tokens, model.config.hidden_size)
    return model.model.rotary_emb(hidden, position_ids=torch.arange(tokens)[None])


def test_decomposed_attention_is_the_original_with_the_dropped_query_key_rows_zeroed(tiny):
    """The kept pairs keep their own RoPE frequencies and the 1/√d_h scaling: the compressed
    attention equals the dense one whose W_Q, W_K rows outside the kept pairs are zero."""
    original = copy.deepcopy(decoder_layers(tiny.model)[0].self_attn)
    head_dim, heads, kv_heads = original.head_dim, 4, 2
    dims = torch.stack([rope_dimensions(torch.rand(head_dim // 2), 3) for _ in range(kv_heads)])
    W_q = original.q_proj.weight.detach().view(heads, head_dim, -1)
    W_k = original.k_proj.weight.detach().view(kv_heads, head_dim, -1)
    groups = heads // kv_heads
    linears = {
        "q_proj": torch.nn.Linear(64, heads * 6, bias=False),
        "k_proj": torch.nn.Linear(64, kv_heads * 6, bias=False),
        "v_proj": copy.deepcopy(original.v_proj),
        "o_proj": copy.deepcopy(original.o_proj),
    }
    with torch.no_grad():
        linears["q_proj"].weight.copy_(torch.cat([W_q[h, dims[h // groups]] for h in range(heads)]))
        linears["k_proj"].weight.copy_(torch.cat([W_k[g, dims[g]] for g in range(kv_heads)]))
        mask_q = torch.zeros(heads, head_dim, 1)
        mask_k = torch.zeros(kv_heads, head_dim, 1)
        for g in range(kv_heads):
            mask_k[g, dims[g]] = 1
            mask_q[g * groups : (g + 1) * groups, dims[g]] = 1
        original.q_proj.weight.copy_((W_q * mask_q).reshape(heads * head_dim, -1))
        original.k_proj.weight.copy_((W_k * mask_k).reshape(kv_heads * head_dim, -1))
    compressed = DecomposedAttention(original, linears, dims, head_dim)
    x = torch.randn(2, 10, 64, generator=torch.Generator().manual_seed(3))
    tables = position_tables(tiny.model, 10)
    mask = torch.full((10, 10), float("-inf")).triu(1)[None, None].expand(2, 1, 10, 10)
    with torch.no_grad():
        expected, _ = original(x, position_embeddings=tables, attention_mask=mask)
        got, _ = compressed(x, position_embeddings=tables, attention_mask=mask)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------- Type III: SVD


@SETTINGS
@given(head_dim=st.integers(2, 8), groups=st.integers(1, 3), seed=st.integers(0, 10_000))
def test_value_output_decomposition_is_exact_at_full_rank(head_dim, groups, seed):
    d = head_dim + 5
    generator = torch.Generator().manual_seed(seed)
    W_v = torch.randn(head_dim, d, generator=generator, dtype=torch.float64)
    W_o = [
        torch.randn(d, head_dim, generator=generator, dtype=torch.float64) for _ in range(groups)
    ]
    X = activations(6 * d, d, seed)
    value, outputs = value_output_svd(W_v, W_o, X.T @ X, head_dim)
    for W, new in zip(W_o, outputs):
        torch.testing.assert_close(X @ value.T @ new.T, X @ W_v.T @ W.T, rtol=1e-7, atol=1e-7)


@SETTINGS
@given(k=st.integers(1, 7), groups=st.integers(1, 3), seed=st.integers(0, 10_000))
def test_value_output_error_is_the_discarded_singular_values(k, groups, seed):
    """Eckart–Young in the whitened space: Σ_h ‖X W_V W_O,h − X W̃_V W̃_O,h‖² = Σ_{i>k} σ_i²
    of C^{1/2} W_V [W_O,1 … W_O,g]."""
    head_dim, d = 8, 12
    generator = torch.Generator().manual_seed(seed)
    W_v = torch.randn(head_dim, d, generator=generator, dtype=torch.float64)
    W_o = [
        torch.randn(d, head_dim, generator=generator, dtype=torch.float64) for _ in range(groups)
    ]
    X = activations(100, d, seed)
    value, outputs = value_output_svd(W_v, W_o, X.T @ X, k)
    error = sum(
        (X @ W_v.T @ W.T - X @ value.T @ new.T).square().sum() for W, new in zip(W_o, outputs)
    )
    root = torch.from_numpy(scipy.linalg.sqrtm((X.T @ X).numpy()).real)
    sigma = torch.linalg.svdvals(root @ W_v.T @ torch.cat([W.T for W in W_o], dim=1))
    assert error.item() == pytest.approx(sigma[k:].square().sum().item(), rel=1e-6, abs=1e-8)


# -------------------------------------------------------------------- sparsity allocation


@SETTINGS
@given(
    scores=st.lists(st.floats(0.0, 1.0), min_size=2, max_size=12),
    mean=st.floats(0.05, 0.3),
    epsilon=st.floats(0.2, 2.0),
)
def test_allocation_meets_the_mean_and_the_entropy_optimality_condition(scores, mean, epsilon):
    """Stationarity of Σ s_l(1 − φ_l) + ε H(φ) under mean φ = φ_avg: s_l + ε log φ_l is the
    same for every unclipped layer."""
    phi = torch.tensor(allocate_sparsity(scores, mean, epsilon, highest=0.95), dtype=torch.float64)
    assert phi.mean().item() == pytest.approx(mean, rel=1e-9)
    assert phi.max() <= 0.95 + 1e-12
    free = phi < 0.95 - 1e-12
    level = torch.tensor(scores, dtype=torch.float64)[free] + epsilon * phi[free].log()
    torch.testing.assert_close(level, level.mean().expand_as(level), rtol=0, atol=1e-9)


def test_allocation_clips_and_shares_the_excess():
    phi = allocate_sparsity([0.0, 0.0, 1.0, 1.0], 0.5, epsilon=0.1, highest=0.6)
    assert phi[:2] == pytest.approx([0.6, 0.6])
    assert phi[2:] == pytest.approx([0.4, 0.4])
    with pytest.raises(SpecError):
        allocate_sparsity([0.1, 0.2], 0.7, epsilon=0.1, highest=0.6)


def test_more_influential_layers_keep_more():
    phi = allocate_sparsity([0.5, 0.1, 0.3], 0.3, epsilon=0.1, highest=0.9)
    assert phi[1] > phi[2] > phi[0]


# -------------------------------------------------------------------------- the model


def logits_of(model) -> torch.Tensor:
    ids = torch.arange(2, 2 + 24).reshape(2, 12)
    with torch.no_grad():
        return model(ids, use_cache=False).logits


def test_full_width_block_reproduces_the_model(fresh_tiny, fixed_calibration):
    """Keeping every channel, pair and head dimension, the three decompositions rebuild the
    block exactly (up to float rounding): nothing but the selection loses information."""
    from mpt_core.engine.layerwise import collect_stats, iterate_blocks
    from mpt_core.lowrank.modegpt import ModuleStats

    model = fresh_tiny.model
    before = logits_of(model)
    for index, block, inputs in iterate_blocks(model, fixed_calibration().windows(None)):
        stats = collect_stats(block, inputs, lambda site, lin: ModuleStats(site.name, lin), index)
        width = widths(block, 1.0)
        compress_mlp(block, stats, width["mlp"], ridge=1e-2)
        compress_attention(block, stats, width)
    assert isinstance(decoder_layers(model)[1].self_attn, DecomposedAttention)
    torch.testing.assert_close(logits_of(model), before, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("ratio", [0.2, 0.5])
def test_modegpt_stores_one_minus_r_of_the_linears_and_restores(
    fresh_tiny, ratio, fixed_calibration
):
    model = fresh_tiny.model
    names = block_linear_names(model)
    linears = sum(model.get_parameter(name).numel() for name in names)
    original_hash, original_logits = state_dict_hash(model), logits_of(model)
    snapshot = Snapshot(model)

    footprint = compress(model, Spec.parse(f"modegpt:{ratio}"), fixed_calibration())

    kept = sum(model.get_parameter(name).numel() for name in block_linear_names(model))
    # rounding: half a MLP channel (3·64 values), half a RoPE pair and half a value dimension
    # per head, per layer
    slack = 2 * (3 * 64 / 2 + 6 * 64 + 6 * 64 / 2) / linears
    assert kept / linears == pytest.approx(1 - ratio, abs=slack)
    assert footprint.compressed_numel == kept
    layout = model.config.modegpt_layout
    assert sum(layer["sparsity"] for layer in layout) / len(layout) == pytest.approx(ratio)
    assert torch.isfinite(logits_of(model)).all()
    assert not torch.equal(logits_of(model), original_logits)

    snapshot.restore(model)
    assert state_dict_hash(model) == original_hash
    assert torch.equal(logits_of(model), original_logits)
    assert not hasattr(model.config, "modegpt_layout")


def test_modegpt_beats_plain_svd_at_the_same_size(fresh_tiny, fixed_calibration):
    """On the calibration windows the compressed model stays closer to the dense one than
    truncated SVD of every matrix with the same parameter count."""
    model = fresh_tiny.model
    calibration = fixed_calibration(nsamples=16)
    windows = calibration.windows(None)
    with torch.no_grad():
        dense = model(windows).logits
    snapshot, errors = Snapshot(model), {}
    for method in ("modegpt", "svd"):
        compress(model, Spec.parse(f"{method}:0.4"), calibration)
        with torch.no_grad():
            errors[method] = (model(windows).logits - dense).square().mean().item()
        snapshot.restore(model)
    assert errors["modegpt"] < errors["svd"]
