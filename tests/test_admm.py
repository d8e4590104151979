"""ADMM (Boža 2024): exact per-layer sparsity, valid N:M, the cubic schedule, and a
weight update that solves the masked least squares better than keeping weights as they are."""

from __future__ import annotations

import pytest
import torch

from mpt_core.engine.layerwise import decoder_layers, linear_layers
from mpt_core.pipeline import Calibration, compress
from mpt_core.prune.admm import GramStats, admm_prune, cubic_sparsity
from mpt_core.prune.mask import unstructured_mask
from mpt_core.spec import Spec

ROWS, COLUMNS, TOKENS = 24, 64, 512


def correlated_inputs(seed: int = 0) -> torch.Tensor:
    """Tokens whose features are strongly correlated and of unequal scale, as in LLMs."""
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(COLUMNS, COLUMNS, generator=generator) / COLUMNS**0.5
    latent = torch.randn(TOKENS, COLUMNS, generator=generator)
    scales = torch.logspace(-1, 1, COLUMNS)
    return (latent @ (torch.eye(COLUMNS) + 2 * mixing)) * scales


def gram(X: torch.Tensor) -> torch.Tensor:
    stats = GramStats(X.shape[1], X.device)
    stats.add_batch(X.unsqueeze(0), None)
    return stats.XX


def error(X: torch.Tensor, W: torch.Tensor, W_hat: torch.Tensor) -> float:
    return float(((X @ W.T - X @ W_hat.T) ** 2).sum())


@pytest.fixture
def layer():
    W = torch.randn(ROWS, COLUMNS, generator=torch.Generator().manual_seed(1))
    return W, correlated_inputs()


@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.5, 0.7, 0.9])
def test_sparsity_per_layer_is_exactly_the_ratio(layer, ratio):
    W, X = layer
    pruned = admm_prune(W, gram(X), ratio)
    assert int((pruned == 0).sum()) == int(W.numel() * ratio)


@pytest.mark.parametrize(("n", "m"), [(2, 4), (4, 8), (1, 4)])
def test_nm_masks_are_valid_in_every_group(layer, n, m):
    W, X = layer
    pruned = admm_prune(W, gram(X), n / m, nm=(n, m))
    zeros_per_group = (pruned == 0).reshape(ROWS, COLUMNS // m, m).sum(dim=2)
    assert torch.equal(zeros_per_group, torch.full_like(zeros_per_group, n))


def test_cubic_schedule_rises_to_the_target_and_stays_monotone():
    schedule = [cubic_sparsity(0.6, t, 15) for t in range(15)]
    assert schedule[-1] == pytest.approx(0.6)
    assert all(a < b for a, b in zip(schedule, schedule[1:], strict=False))
    assert schedule[0] == pytest.approx(0.6 * (1 - (14 / 15) ** 3))


@pytest.mark.parametrize("ratio", [0.5, 0.7])
def test_reconstruction_error_below_magnitude_with_the_same_budget(layer, ratio):
    W, X = layer
    magnitude = W.masked_fill(unstructured_mask(W.abs(), ratio), 0)
    admm = admm_prune(W, gram(X), ratio)
    assert (admm == 0).sum() == (magnitude == 0).sum()
    assert error(X, W, admm) < 0.5 * error(X, W, magnitude)


def test_with_a_fixed_mask_it_converges_to_the_masked_least_squares(layer):
    """The paper's problem, min ‖XW − XŴ‖² s.t. Ŵ zero off the mask, solved row by row."""
    W, X = layer
    XX = gram(X)
    pruned = admm_prune(W, XX, 0.5, percdamp=1e-6, iters=400, prune_iters=1)
    for row in range(ROWS):
        kept = pruned[row] != 0
        exact = torch.linalg.solve(XX[kept][:, kept], XX[kept] @ W[row])
        torch.testing.assert_close(pruned[row, kept], exact, rtol=2e-3, atol=2e-3)


def test_gram_statistics_do_not_depend_on_the_batch_split(layer):
    _, X = layer
    split = GramStats(COLUMNS, X.device)
    for part in X.reshape(4, -1, COLUMNS):
        split.add_batch(part.unsqueeze(0), None)
    torch.testing.assert_close(split.XX, gram(X), rtol=1e-4, atol=1e-2)


@pytest.mark.parametrize("text", ["admm:0.6[nsamples=4]", "admm:2:4[nsamples=4]"])
def test_on_the_tiny_model_every_linear_reaches_the_level(fresh_tiny, text):
    compress(fresh_tiny.model, Spec.parse(text), Calibration(fresh_tiny.tokenizer, 32))
    for block in decoder_layers(fresh_tiny.model):
        for name, linear in linear_layers(block).items():
            W = linear.weight
            if text.startswith("admm:2:4"):
                groups = (W == 0).reshape(W.shape[0], -1, 4).sum(dim=2)
                assert bool((groups == 2).all()), name
            else:
                assert int((W == 0).sum()) == int(W.numel() * 0.6), name
