"""OWL: layer sparsities from outlier ratios average to R and span 2λ, more outliers mean
less pruning, the outlier ratio by hand, and on the tiny model each layer gets its ratio
(λ = 0 is plain Wanda)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import needs_data
from mpt_core.engine.layerwise import decoder_layers, linear_layers
from mpt_core.pipeline import Calibration, compress
from mpt_core.prune.owl import layer_outlier_ratio, outlier_ratios, owl_sparsities
from mpt_core.spec import Spec

SETTINGS = settings(max_examples=30, deadline=None)
CALIB = "[nsamples=4]"


@SETTINGS
@given(
    lod=st.lists(st.floats(0, 20), min_size=2, max_size=40),
    R=st.floats(0.2, 0.8),
    lam=st.floats(0, 0.08),
)
def test_layer_sparsities_average_to_r_and_span_two_lambda(lod, R, lam):
    sparsities = owl_sparsities(lod, R, lam)
    assert math.isclose(sum(sparsities) / len(sparsities), R, abs_tol=1e-9)
    if max(lod) > min(lod):
        assert math.isclose(max(sparsities) - min(sparsities), 2 * lam, abs_tol=1e-9)
    else:
        assert sparsities == [R] * len(lod)
    # more outliers, fewer weights removed
    for i, j in zip(range(len(lod)), range(1, len(lod))):
        if lod[i] > lod[j]:
            assert sparsities[i] <= sparsities[j] + 1e-12


def test_a_layer_mapped_below_zero_gets_the_reference_floor():
    # R < 2λ: the layer with most outliers would be dense or worse; theirs prunes 1%
    sparsities = owl_sparsities([0.0, 10.0], R=0.05, lam=0.08)
    assert sparsities == pytest.approx([0.13, 0.01])


def test_outlier_ratio_by_hand():
    scores = [torch.tensor([[1.0, 1.0], [1.0, 21.0]]), torch.tensor([[1.0, 1.0, 1.0, 12.0]])]
    # mean 5, M = 2: the 21 and the 12 exceed 10, 2 of 8 scores
    assert layer_outlier_ratio(scores, M=2) == 25.0


def block_sparsities(model) -> list[float]:
    result = []
    for block in decoder_layers(model):
        weights = [linear.weight for linear in linear_layers(block).values()]
        zeros = sum(int((w == 0).sum()) for w in weights)
        result.append(zeros / sum(w.numel() for w in weights))
    return result


@needs_data
def test_each_decoder_layer_is_pruned_to_its_owl_ratio(fresh_tiny):
    model = fresh_tiny.model
    calibration = Calibration(fresh_tiny.tokenizer, 32)
    windows = calibration.windows({"calib": None, "nsamples": 4, "seed": 0})
    expected = owl_sparsities(outlier_ratios(model, windows, M=5.0), 0.6, 0.08)
    compress(model, Spec.parse(f"owl:0.6{CALIB[:-1]},lam=0.08]"), calibration)
    # Wanda prunes int(columns * ratio) per row: within one column of the ratio
    for achieved, target in zip(block_sparsities(model), expected, strict=True):
        assert target - 1 / 64 <= achieved <= target
    assert abs(sum(expected) / len(expected) - 0.6) < 1e-9


@needs_data
def test_lambda_zero_is_plain_wanda(fresh_tiny, tiny):
    calibration = Calibration(fresh_tiny.tokenizer, 32)
    model = fresh_tiny.model
    compress(model, Spec.parse(f"owl:0.5{CALIB[:-1]},lam=0]"), calibration)
    reference = type(model)(model.config)
    reference.load_state_dict(tiny.model.state_dict())
    compress(reference, Spec.parse(f"wanda:0.5{CALIB}"), calibration)
    for (name, ours), theirs in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(ours, theirs), name
