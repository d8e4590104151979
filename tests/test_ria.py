"""RIA: the relative-importance score by hand, exact sparsity per layer (their default) or
per output row, N:M valid in the permuted channel order, and the channel permutation's
assignment scores equal to the reference's brute-force computation."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mpt_core.engine.signals import InputNormStats
from mpt_core.prune.mask import nm_mask
from mpt_core.prune.ria import (
    channel_permutation,
    lsa_scores,
    prune_linear,
    reallocation,
    ria_score,
)
from mpt_core.spec import parse_stage

SETTINGS = settings(max_examples=20, deadline=None)
DEFAULTS = {"alpha": 0.5, "scope": "layer", "permute": True}


def linear_with_stats(rows: int, columns: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    linear = nn.Linear(columns, rows, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(rows, columns, generator=generator))
    stats = InputNormStats(linear)
    stats.add_batch(torch.randn(3, 4, columns, generator=generator) * 3, None)
    return linear, stats


def kept_score(score: torch.Tensor, n: int, m: int) -> float:
    return score.masked_fill(nm_mask(score, n, m), 0).sum().item()


def test_score_is_relative_importance_times_activation_power_by_hand():
    linear, stats = linear_with_stats(5, 6, seed=1)
    W = linear.weight.detach()
    score = ria_score(W, stats.scaler_row, alpha=0.5)
    for i in range(5):
        for j in range(6):
            column_sum = sum(abs(W[k, j].item()) for k in range(5))
            row_sum = sum(abs(W[i, k].item()) for k in range(6))
            relative = abs(W[i, j].item()) / column_sum + abs(W[i, j].item()) / row_sum
            expected = relative * math.sqrt(stats.scaler_row[j].item()) ** 0.5
            assert math.isclose(score[i, j].item(), expected, rel_tol=1e-5)


@SETTINGS
@given(
    rows=st.integers(1, 12),
    columns=st.integers(1, 40),
    ratio=st.floats(0, 0.95).map(lambda r: round(r, 4)),  # as a spec writes it
    scope=st.sampled_from(["layer", "row"]),
    seed=st.integers(0, 10_000),
)
def test_layer_or_row_loses_exactly_its_share(rows, columns, ratio, scope, seed):
    linear, stats = linear_with_stats(rows, columns, seed)
    prune_linear(linear, stats, parse_stage(f"ria:{ratio!r}"), DEFAULTS | {"scope": scope})
    pruned = linear.weight == 0
    if scope == "layer":
        assert pruned.sum() == int(rows * columns * ratio)
    else:
        assert (pruned.sum(dim=1) == int(columns * ratio)).all()


@SETTINGS
@given(
    rows=st.integers(1, 8),
    groups=st.integers(1, 8),
    nm=st.sampled_from([(2, 4), (1, 4), (4, 8)]),
    seed=st.integers(0, 10_000),
)
def test_nm_is_valid_in_every_group_of_the_permuted_channels(rows, groups, nm, seed):
    n, m = nm
    linear, stats = linear_with_stats(rows, groups * m, seed)
    score = ria_score(linear.weight.detach(), stats.scaler_row, 0.5)
    index = channel_permutation(score, n, m)
    assert torch.equal(index.sort().values, torch.arange(groups * m))
    storage = prune_linear(linear, stats, parse_stage(f"ria:{n}:{m}"), DEFAULTS)
    pruned = (linear.weight == 0)[:, index]
    assert (pruned.reshape(rows, groups, m).sum(dim=2) == n).all()
    assert storage.nm == (n, m)
    assert storage.extra_bits == groups * m * math.ceil(math.log2(groups * m))
    # each assignment keeps the best total, so permuting never loses to reallocation alone
    before = kept_score(score[:, reallocation(score, m)], n, m)
    assert kept_score(score[:, index], n, m) >= before * (1 - 1e-6)  # up to summation order


def test_without_permutation_nm_groups_are_consecutive_columns():
    linear, stats = linear_with_stats(6, 16, seed=4)
    storage = prune_linear(linear, stats, parse_stage("ria:2:4"), DEFAULTS | {"permute": False})
    assert ((linear.weight == 0).reshape(6, 4, 4).sum(dim=2) == 2).all()
    assert storage.extra_bits == 0


def reference_lsa_scores(S: torch.Tensor, position: int, n: int, m: int) -> torch.Tensor:
    """The reference's score matrix: for target group j and source group i, sort the M
    scores of every row, mask the N lowest, sum what is kept (their ``lsa`` loop)."""
    groups = S.shape[1] // m
    kept = torch.zeros(groups, groups)
    for j in range(groups):
        for i in range(groups):
            columns = [i * m + position] + [j * m + k for k in range(m) if k != position]
            values = torch.sort(S[:, columns], dim=1).values
            kept[j, i] = values[:, n:].sum()
    return kept


@SETTINGS
@given(
    rows=st.integers(1, 6),
    groups=st.integers(1, 6),
    nm=st.sampled_from([(2, 4), (1, 4), (3, 4), (4, 8)]),
    seed=st.integers(0, 10_000),
)
def test_assignment_scores_equal_the_reference_brute_force(rows, groups, nm, seed):
    n, m = nm
    S = torch.rand(rows, groups * m, generator=torch.Generator().manual_seed(seed))
    for position in range(m):
        torch.testing.assert_close(
            lsa_scores(S, position, n, m), reference_lsa_scores(S, position, n, m)
        )


def test_reallocation_deals_sorted_channels_zigzag():
    score = torch.tensor([[float(v) for v in [7, 0, 5, 2, 6, 1, 4, 3]]])
    # ascending: 1,5,3,7 | 6,2,4,0 ; position 0 takes the first half, position 1 the
    # second half reversed, so strong and weak channels pair up
    assert reallocation(score, 2).tolist() == [1, 0, 5, 4, 3, 2, 7, 6]
