"""DSnoT (Zhang et al., ICLR 2024): swaps keep every row's (and every N:M group's) count,
never increase the expected reconstruction error |ε_r| they steer by, and the statistics
are the reference's."""

from __future__ import annotations

import pytest
import torch

from mpt_core.engine.layerwise import decoder_layers, linear_layers
from mpt_core.engine.signals import wanda_score
from mpt_core.pipeline import Calibration, compress
from mpt_core.prune.dsnot import DSnoTStats, dsnot_nm, dsnot_unstructured, prune_linear
from mpt_core.prune.mask import nm_mask, unstructured_mask
from mpt_core.snapshot import Snapshot
from mpt_core.spec import Spec

ROWS, COLUMNS, SAMPLES, TOKENS = 32, 256, 6, 40


def stats_for(X: torch.Tensor) -> DSnoTStats:
    stats = DSnoTStats(torch.nn.Linear(COLUMNS, ROWS, bias=False), "wanda")
    stats.add_batch(X, None)
    return stats


@pytest.fixture
def layer():
    generator = torch.Generator().manual_seed(0)
    W = torch.randn(ROWS, COLUMNS, generator=generator)
    shift = torch.randn(COLUMNS, generator=generator)  # inputs of non-zero mean, as after norms
    X = torch.randn(SAMPLES, TOKENS, COLUMNS, generator=generator) + shift
    return W, stats_for(X)


def expected_error(W, W_hat, stats) -> torch.Tensor:
    """ε_r = Σ_j (W_rj − Ŵ_rj) · E[x_j], the objective DSnoT drives towards 0."""
    return ((W - W_hat) * stats.sum_metric_row).sum(dim=1)


def run_unstructured(W, stats, ratio, same_sign=True, threshold=0.1):
    score = wanda_score(W, stats.wanda.scaler_row)
    pruned = unstructured_mask(score, ratio, "row")
    W_hat = W.masked_fill(pruned, 0)
    after = dsnot_unstructured(
        W, W_hat, pruned, stats.sum_metric_row, stats.var, score, 50, threshold, same_sign
    )
    return pruned, after


@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.7])
def test_unstructured_cycles_keep_each_rows_count_and_never_increase_the_error(layer, ratio):
    W, stats = layer
    before, after = run_unstructured(W, stats, ratio)
    assert torch.equal(before.sum(dim=1), after.sum(dim=1))
    assert not torch.equal(before, after), "no swap happened"
    error_before = expected_error(W, W.masked_fill(before, 0), stats).abs()
    error_after = expected_error(W, W.masked_fill(after, 0), stats).abs()
    assert bool((error_after <= error_before + 1e-4).all())
    assert error_after.sum() < 0.5 * error_before.sum()


def test_a_row_with_no_pruning_candidate_stays_put_while_others_cycle(layer):
    """A fully pruned row whose error is negative reads its (empty) pruning list from the
    back every cycle; its pointer runs off the list while the other rows keep swapping
    (dsnot:0.7[init=sparsegpt] on SmolLM2 hit this as an index error)."""
    W, stats = layer
    W = W.clone()
    W[0] = -W[0].abs() * torch.sign(stats.sum_metric_row)
    score = wanda_score(W, stats.wanda.scaler_row)
    pruned = unstructured_mask(score, 0.5, "row")
    pruned[0] = True
    W_hat = W.masked_fill(pruned, 0)
    assert expected_error(W, W_hat, stats)[0] < 0
    after = dsnot_unstructured(
        W, W_hat, pruned, stats.sum_metric_row, stats.var, score, 50, 0.1, True
    )
    assert bool(after[0].all())
    assert torch.equal(pruned.sum(dim=1), after.sum(dim=1))
    assert not torch.equal(pruned[1:], after[1:]), "the other rows stopped swapping"


def test_rows_already_within_the_threshold_are_left_alone(layer):
    W, stats = layer
    before, after = run_unstructured(W, stats, 0.5, threshold=1e9)
    assert torch.equal(before, after)


@pytest.mark.parametrize(("n", "m"), [(2, 4), (4, 8)])
def test_nm_cycles_keep_every_group_valid_and_the_sign_of_the_error(layer, n, m):
    """The N:M victim is the lowest-scored weight of the grown one's group, whatever its
    W·E[x]: the reference only rejects swaps that flip the sign of ε_r, so a row's |ε_r|
    may grow (2 rows of 32 here); the total falls."""
    W, stats = layer
    score = wanda_score(W, stats.wanda.scaler_row)
    before = nm_mask(score, n, m)
    after = dsnot_nm(
        W, W.masked_fill(before, 0), before, stats.sum_metric_row, stats.var, score, m, 50, 0.1
    )
    groups = after.reshape(ROWS, -1, m).sum(dim=2)
    assert bool((groups == n).all())
    assert not torch.equal(before, after), "no swap happened"
    error_before = expected_error(W, W.masked_fill(before, 0), stats)
    error_after = expected_error(W, W.masked_fill(after, 0), stats)
    assert torch.equal(torch.sign(error_after), torch.sign(error_before))
    assert error_after.abs().sum() < 0.5 * error_before.abs().sum()


def test_statistics_are_the_references_running_means(layer):
    """E[x]: per-sample token sums averaged over samples; Var: running mean of per-sample
    variances weighted by tokens; both whatever the batch split."""
    generator = torch.Generator().manual_seed(3)
    X = torch.randn(SAMPLES, TOKENS, COLUMNS, generator=generator) * 2 + 1
    whole, split = stats_for(X), DSnoTStats(torch.nn.Linear(COLUMNS, ROWS), "wanda")
    for part in X.split(4):
        split.add_batch(part, None)
    expected_mean = X.sum(dim=1).mean(dim=0)
    expected_var = X.var(dim=1, unbiased=False).mean(dim=0)
    for stats in (whole, split):
        torch.testing.assert_close(stats.sum_metric_row, expected_mean)
        torch.testing.assert_close(stats.var, expected_var)


def first_block_attention(model) -> dict[str, torch.Tensor]:
    """Block 0's attention projections: the only linears whose calibration inputs are the
    same with and without DSnoT (it changes what later linears see)."""
    block = decoder_layers(model)[0]
    return {
        name: linear.weight.detach().clone()
        for name, linear in linear_layers(block).items()
        if name.startswith("self_attn")
    }


@pytest.mark.parametrize("init", ["wanda", "sparsegpt"])
def test_on_the_tiny_model_rows_keep_the_initial_methods_count(fresh_tiny, init):
    model = fresh_tiny.model
    calibration = Calibration(fresh_tiny.tokenizer, 32)
    snapshot = Snapshot(model)
    compress(model, Spec.parse(f"{init}:0.5[nsamples=4]"), calibration)
    initial = first_block_attention(model)
    snapshot.restore(model)
    compress(model, Spec.parse(f"dsnot:0.5[init={init},nsamples=4]"), calibration)
    final = first_block_attention(model)
    for name, weight in final.items():
        assert torch.equal((weight == 0).sum(dim=1), (initial[name] == 0).sum(dim=1)), name
    assert any(not torch.equal(final[name], initial[name]) for name in final)


@pytest.mark.parametrize(("skip", "changed"), [("mlp", False), ("none", True)])
def test_skipped_linears_stay_at_the_initial_mask(layer, skip, changed):
    """The reference's default --skip_layer mlp: MLP projections keep Wanda's mask."""
    W, stats = layer
    stage = Spec.parse("dsnot:0.5").stages[0]
    settings = {"skip": skip, "max_cycle": 50, "threshold": 0.1, "pow_var": 1.0}
    linear = torch.nn.Linear(COLUMNS, ROWS, bias=False)
    linear.weight.data.copy_(W)
    prune_linear("mlp.up_proj", linear, stats, stage, settings | {"same_sign": True})
    wanda = W.masked_fill(unstructured_mask(wanda_score(W, stats.wanda.scaler_row), 0.5, "row"), 0)
    assert torch.equal(linear.weight.data, wanda) is not changed
