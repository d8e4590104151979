"""BESA (Xu et al., ICLR 2024): the differentiable mask, the reachable-sparsity bound of
sigmoid smoothing, Prodigy, and a learned allocation whose mean is the target."""

from __future__ import annotations

import math

import pytest
import torch

from mpt_core.engine.layerwise import decoder_layers, linear_layers
from mpt_core.errors import SpecError
from mpt_core.pipeline import Calibration, compress
from mpt_core.prune.besa import (
    Prodigy,
    SparsityAllocation,
    max_expected_sparsity,
    sparsity_candidates,
)
from mpt_core.spec import Spec

STEP = 0.01


@pytest.fixture
def allocation():
    score = torch.rand(6, 50, generator=torch.Generator().manual_seed(0))
    allocation = SparsityAllocation(score, sparsity_candidates(STEP, "cpu"), "row", sigmoid=False)
    with torch.no_grad():
        allocation.logits.copy_(torch.randn(6, 101, generator=torch.Generator().manual_seed(1)))
    return score, allocation


def test_candidates_run_from_one_to_zero():
    candidates = sparsity_candidates(STEP, "cpu")
    assert len(candidates) == 101
    assert candidates[0] == 1.0 and candidates[-1] == 0.0


def test_hard_mask_prunes_the_lowest_scores_at_each_rows_expected_sparsity(allocation):
    score, allocation = allocation
    kept = allocation.hard_mask().bool()
    sparsities = allocation.sparsities().detach()
    for row in range(score.shape[0]):
        count = int(sparsities[row] * score.shape[1])
        assert int((~kept[row]).sum()) == count
        if count:
            assert score[row][~kept[row]].max() <= score[row][kept[row]].min()


def test_mask_is_hard_forward_and_the_keep_probability_backward(allocation):
    _, allocation = allocation
    mask = allocation.mask()
    torch.testing.assert_close(mask, allocation.hard_mask())
    # Σ_j P(keep j) = columns · (1 − s) up to the flooring of c_k · columns
    kept = allocation.keep_probability().sum(dim=1)
    expected = allocation.columns * (1 - allocation.sparsities())
    assert bool(((kept - expected).abs() <= 1).all())
    (mask * torch.arange(50.0)).sum().backward()
    assert allocation.logits.grad is not None and allocation.logits.grad.abs().sum() > 0


def test_sigmoid_smoothing_bounds_the_expected_sparsity():
    candidates = sparsity_candidates(STEP, "cpu")
    bound = max_expected_sparsity(candidates)
    assert bound == pytest.approx(0.6237, abs=1e-4)
    # no logits exceed it: sigmoid ∈ (0, 1) caps any probability ratio at e
    logits = torch.where(candidates > 0.4, 60.0, -60.0)
    reached = float(logits.sigmoid().softmax(-1) @ candidates)
    assert reached <= bound + 1e-6


def test_a_target_beyond_the_bound_is_refused(fresh_tiny):
    calibration = Calibration(fresh_tiny.tokenizer, 32)
    with pytest.raises(SpecError, match="sigmoid=false"):
        compress(fresh_tiny.model, Spec.parse("besa:0.7[nsamples=2]"), calibration)


def test_prodigy_minimises_a_quadratic():
    x = torch.nn.Parameter(torch.tensor([3.0, -2.0]))
    optimizer = Prodigy([x], d_coef=1.0)
    for _ in range(300):
        optimizer.zero_grad()
        (x**2).sum().backward()
        optimizer.step()
    assert float((x.detach() ** 2).sum()) < 1e-2
    assert optimizer.param_groups[0]["d"] > 1e-6  # the step size was estimated, not fixed


def row_sparsities(model) -> dict[str, torch.Tensor]:
    return {
        f"{index}.{name}": (linear.weight == 0).float().mean(dim=1)
        for index, block in enumerate(decoder_layers(model))
        for name, linear in linear_layers(block).items()
    }


@pytest.mark.parametrize(("alloc", "ratio"), [("row", 0.5), ("layer", 0.5), ("row", 0.7)])
def test_mean_sparsity_is_the_target_within_the_allocation_granularity(fresh_tiny, alloc, ratio):
    # the uniform start is at 0.5: reaching 0.7 takes about 30 Prodigy steps per block
    far = ",sigmoid=false,epochs=4" if ratio > 0.6 else ""
    options = f"alloc={alloc},nsamples=8{far}"
    footprint = compress(
        fresh_tiny.model,
        Spec.parse(f"besa:{ratio}[{options}]"),
        Calibration(fresh_tiny.tokenizer, 32),
    )
    rows = row_sparsities(fresh_tiny.model)
    narrowest = min(
        linear.in_features
        for linear in fresh_tiny.model.modules()
        if isinstance(linear, torch.nn.Linear)
    )
    # the candidates' spacing, plus one weight per row lost to int(s · columns)
    assert math.isclose(footprint.sparsity, ratio, abs_tol=STEP + 1 / narrowest)
    spread = [float(r.max() - r.min()) for r in rows.values()]
    if alloc == "layer":
        assert max(spread) == 0  # one sparsity for every row of a linear
    else:
        assert max(spread) > 0  # rows learned their own
    assert len({round(float(r.mean()), 3) for r in rows.values()}) > 1  # layers differ
