"""Wanda: the score is |W|·‖X_j‖₂ by hand, each output row loses exactly its share, N:M
groups are valid, and nothing but the mask changes the weights."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mpt_core.engine.signals import InputNormStats, wanda_score
from mpt_core.prune.wanda import prune_linear
from mpt_core.spec import parse_stage

SETTINGS = settings(max_examples=25, deadline=None)


def linear_with_stats(rows: int, columns: int, seed: int, batches: int = 3):
    """A random linear layer and its Wanda statistics over random inputs (batch, tokens, in)."""
    generator = torch.Generator().manual_seed(seed)
    linear = nn.Linear(columns, rows, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(rows, columns, generator=generator))
    stats = InputNormStats(linear)
    inputs = [torch.randn(2, 5, columns, generator=generator) for _ in range(batches)]
    for inp in inputs:
        stats.add_batch(inp, linear(inp))
    return linear, stats, torch.cat([inp.reshape(-1, columns) for inp in inputs])


def test_score_is_weight_magnitude_times_input_norm_by_hand():
    linear, stats, X = linear_with_stats(6, 8, seed=1)
    nsamples = 6  # 3 batches of 2 samples: ‖X_j‖² is averaged over samples, as theirs
    W = linear.weight.detach()
    score = wanda_score(W, stats.scaler_row)
    for i in range(6):
        for j in range(8):
            norm = torch.sqrt(sum(x * x for x in X[:, j].tolist()) / torch.tensor(nsamples))
            assert torch.isclose(score[i, j], abs(W[i, j].item()) * norm, rtol=1e-5)


def test_statistics_do_not_depend_on_the_batch_split():
    linear, whole, X = linear_with_stats(4, 8, seed=2, batches=1)
    split = InputNormStats(linear)
    for sample in X.reshape(2, 5, 8).split(1):
        split.add_batch(sample, None)
    torch.testing.assert_close(split.scaler_row, whole.scaler_row)


@SETTINGS
@given(
    rows=st.integers(1, 12),
    columns=st.integers(1, 40),
    ratio=st.floats(0, 0.95).map(lambda r: round(r, 4)),  # as a spec writes it
    seed=st.integers(0, 10_000),
)
def test_every_output_row_loses_exactly_its_share_of_lowest_scores(rows, columns, ratio, seed):
    linear, stats, _ = linear_with_stats(rows, columns, seed)
    W = linear.weight.detach().clone()
    score = wanda_score(W, stats.scaler_row)
    prune_linear(linear, stats, parse_stage(f"wanda:{ratio!r}"), {})
    pruned = linear.weight == 0
    assert (pruned.sum(dim=1) == int(columns * ratio)).all()
    # kept weights are untouched (no update) and outscore every pruned weight of their row
    assert torch.equal(linear.weight[~pruned], W[~pruned])
    for i in range(rows):
        if pruned[i].any() and (~pruned[i]).any():
            assert score[i][pruned[i]].max() <= score[i][~pruned[i]].min()


@SETTINGS
@given(
    rows=st.integers(1, 8),
    groups=st.integers(1, 6),
    nm=st.sampled_from([(1, 2), (2, 4), (1, 4), (3, 4), (4, 8), (2, 8)]),
    seed=st.integers(0, 10_000),
)
def test_nm_masks_are_valid_in_every_group_of_m(rows, groups, nm, seed):
    n, m = nm
    linear, stats, _ = linear_with_stats(rows, groups * m, seed)
    score = wanda_score(linear.weight.detach(), stats.scaler_row).reshape(rows, groups, m)
    prune_linear(linear, stats, parse_stage(f"wanda:{n}:{m}"), {})
    pruned = (linear.weight == 0).reshape(rows, groups, m)
    assert (pruned.sum(dim=2) == n).all()
    kept_min = score.masked_fill(pruned, float("inf")).min(dim=2).values
    assert (score.masked_fill(~pruned, float("-inf")).max(dim=2).values <= kept_min).all()


def test_with_equal_input_norms_wanda_is_per_row_magnitude():
    linear, stats, _ = linear_with_stats(8, 16, seed=3)
    stats.scaler_row.fill_(2.0)
    W = linear.weight.detach().clone()
    prune_linear(linear, stats, parse_stage("wanda:0.5"), {})
    expected = torch.argsort(W.abs(), dim=1, stable=True)[:, :8]
    assert torch.equal(linear.weight.gather(1, expected), torch.zeros(8, 8))
