"""SparseGPT: the Hessian by hand, no pruning leaves W unchanged, the per-block mask gives
the layer its sparsity, N:M groups are valid, and the OBS update reconstructs the layer's
output better than pruning without it (magnitude, Wanda) at the same mask budget."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mpt_core.engine.signals import HessianStats, InputNormStats, wanda_score
from mpt_core.errors import SpecError
from mpt_core.prune.mask import unstructured_mask
from mpt_core.prune.sparsegpt import sparsegpt_prune

SETTINGS = settings(max_examples=20, deadline=None)


def correlated_inputs(columns: int, tokens: int, seed: int) -> torch.Tensor:
    """(tokens, columns) inputs mixed through a random matrix, with a few strong features,
    as LLM activations: the case where the Hessian's off-diagonal terms matter."""
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(columns, columns, generator=generator) / math.sqrt(columns)
    scale = torch.ones(columns)
    scale[: max(1, columns // 16)] = 8.0
    return (torch.randn(tokens, columns, generator=generator) @ mixing + 0.5) * scale


def hessian(X: torch.Tensor) -> torch.Tensor:
    linear = nn.Linear(X.shape[1], 1, bias=False)
    stats = HessianStats(linear)
    stats.add_batch(X.unsqueeze(0), None)
    return stats.H


def test_hessian_is_two_over_n_x_xt_by_hand():
    X = torch.randn(3, 7, 5)
    stats = HessianStats(nn.Linear(5, 2))
    for sample in X.split(1):  # one sample at a time, as the reference
        stats.add_batch(sample, None)
    tokens = X.reshape(-1, 5)
    torch.testing.assert_close(stats.H, 2 / 3 * tokens.t() @ tokens)


@SETTINGS
@given(rows=st.integers(1, 8), columns=st.integers(2, 48), seed=st.integers(0, 10_000))
def test_ratio_zero_leaves_w_unchanged(rows, columns, seed):
    W = torch.randn(rows, columns, generator=torch.Generator().manual_seed(seed))
    H = hessian(correlated_inputs(columns, 4 * columns, seed))
    assert torch.equal(sparsegpt_prune(W, H, 0.0, blocksize=16), W)


@SETTINGS
@given(
    rows=st.integers(1, 10),
    columns=st.integers(2, 64),
    ratio=st.floats(0, 0.95),
    blocksize=st.sampled_from([8, 16, 128]),
    seed=st.integers(0, 10_000),
)
def test_each_block_and_so_the_layer_reaches_the_ratio(rows, columns, ratio, blocksize, seed):
    W = torch.randn(rows, columns, generator=torch.Generator().manual_seed(seed))
    H = hessian(correlated_inputs(columns, 4 * columns, seed))
    pruned = sparsegpt_prune(W, H, ratio, blocksize=blocksize) == 0
    blocks = range(0, columns, blocksize)
    expected = sum(int(rows * min(blocksize, columns - i1) * ratio) for i1 in blocks)
    assert pruned.sum() == expected
    assert abs(pruned.float().mean() - ratio) <= len(blocks) / W.numel()


@SETTINGS
@given(
    rows=st.integers(1, 8),
    groups=st.integers(1, 10),
    nm=st.sampled_from([(2, 4), (1, 4), (4, 8), (3, 8)]),
    seed=st.integers(0, 10_000),
)
def test_nm_masks_are_valid_in_every_group_of_m(rows, groups, nm, seed):
    n, m = nm
    columns = groups * m
    W = torch.randn(rows, columns, generator=torch.Generator().manual_seed(seed))
    H = hessian(correlated_inputs(columns, 4 * columns, seed))
    pruned = sparsegpt_prune(W, H, n=n, m=m, blocksize=16) == 0
    assert (pruned.reshape(rows, groups, m).sum(dim=2) == n).all()


def test_nm_needs_m_to_divide_the_block():
    with pytest.raises(SpecError, match="divide"):
        sparsegpt_prune(torch.randn(2, 24), torch.eye(24), n=2, m=8, blocksize=12)


def test_dead_inputs_are_pruned_and_the_rest_still_solved():
    X = correlated_inputs(16, 64, seed=5)
    X[:, 3] = 0
    W = torch.randn(4, 16)
    pruned = sparsegpt_prune(W, hessian(X), 0.0)
    assert (pruned[:, 3] == 0).all()
    assert torch.isfinite(pruned).all()


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])  # whole rows and blocks
def test_obs_update_beats_magnitude_and_wanda_at_the_same_budget(ratio):
    X = correlated_inputs(128, 1024, seed=7)
    W = torch.randn(64, 128, generator=torch.Generator().manual_seed(8))
    stats = InputNormStats(nn.Linear(128, 64))
    stats.add_batch(X.unsqueeze(0), None)
    magnitude = W.masked_fill(unstructured_mask(W.abs(), ratio), 0)
    wanda = W.masked_fill(unstructured_mask(wanda_score(W, stats.scaler_row), ratio, "row"), 0)
    sparse = sparsegpt_prune(W, hessian(X), ratio, blocksize=32)

    def error(W_hat):
        return torch.linalg.norm(W @ X.t() - W_hat @ X.t()).item()

    budget = int(W.numel() * ratio)
    assert (magnitude == 0).sum() == budget and (wanda == 0).sum() == budget
    assert (sparse == 0).sum() == budget  # 128 columns in blocks of 32: floor is exact
    assert error(sparse) < error(wanda) < error(magnitude)
    # the update, not the mask alone, is what wins: SparseGPT's mask without it is worse
    assert error(sparse) < error(W.masked_fill(sparse == 0, 0))
