"""LoSparse: the decomposition, the budget, the reference's pruning schedule and sensitivity,
training, and the compressed model's storage and exact restore."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mpt_core.engine.layerwise import block_linear_names
from mpt_core.errors import SpecError
from mpt_core.lowrank.factorized import rank_for_ratio, truncated_svd
from mpt_core.lowrank.losparse import (
    FINAL_WARMUP,
    INITIAL_WARMUP,
    LoSparseLinear,
    Sensitivity,
    keep_rows,
    kept_fraction,
    losparse_init,
    row_bits,
)
from mpt_core.models import state_dict_hash
from mpt_core.pipeline import compress
from mpt_core.snapshot import Snapshot
from mpt_core.spec import Spec
from mpt_core.storage import dense_numel

pytestmark = pytest.mark.usefixtures("one_thread")
SETTINGS = settings(max_examples=15, deadline=None)


def linear_of(weight: torch.Tensor) -> nn.Linear:
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False, dtype=weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(weight)
    return linear


# ---------------------------------------------------------------------- the decomposition


@SETTINGS
@given(m=st.integers(2, 20), n=st.integers(2, 20), seed=st.integers(0, 10_000), data=st.data())
def test_init_is_the_truncated_svd_plus_the_whole_residual(m, n, seed, data):
    rank = data.draw(st.integers(1, min(m, n)))
    W = torch.randn(m, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    layer = losparse_init(linear_of(W), rank)
    u, vt = truncated_svd(W, rank)
    torch.testing.assert_close(layer.u.weight @ layer.vt.weight, u @ vt)
    torch.testing.assert_close(layer.u.weight @ layer.vt.weight + layer.sparse, W)
    x = torch.randn(3, n, dtype=torch.float64)
    torch.testing.assert_close(layer(x), x @ W.T)


@SETTINGS
@given(m=st.integers(2, 16), n=st.integers(2, 16), seed=st.integers(0, 10_000), data=st.data())
def test_dropping_rows_of_s_costs_exactly_their_residual(m, n, seed, data):
    """‖W − U V − S_kept‖_F² = Σ over the dropped rows of ‖(W − U V)_row‖²; the compact layer
    computes U V x + S_kept x."""
    rank = data.draw(st.integers(1, min(m, n)))
    keep = torch.tensor(data.draw(st.lists(st.booleans(), min_size=m, max_size=m)))
    W = torch.randn(m, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    compact = losparse_init(linear_of(W), rank).kept(keep)
    S = torch.zeros(m, n, dtype=torch.float64)
    S[compact.rows] = compact.sparse.detach()
    approx = compact.u.weight @ compact.vt.weight + S
    residual = W - compact.u.weight @ compact.vt.weight
    assert (W - approx).square().sum().item() == pytest.approx(
        residual[~keep].square().sum().item(), rel=1e-9, abs=1e-12
    )
    x = torch.randn(4, n, dtype=torch.float64)
    torch.testing.assert_close(compact(x), x @ approx.T)


@pytest.mark.parametrize("seed", range(3))
def test_low_rank_plus_sparse_beats_svd_at_the_same_storage(seed):
    """The paper's premise: a coherent low-rank part plus a few outlier neurons is stored
    better as U V + S (rows) than by a larger rank alone, at equal bits."""
    generator = torch.Generator().manual_seed(seed)
    m = n = 64
    W = torch.randn(m, 8, generator=generator) @ torch.randn(8, n, generator=generator)
    W += 0.01 * torch.randn(m, n, generator=generator)
    W[torch.randperm(m, generator=generator)[:12]] += torch.randn(12, n, generator=generator)
    ratio, rank = 0.5, 8
    layer = losparse_init(linear_of(W.double()), rank)
    budget = 16 * ((1 - ratio) * m * n - rank * (m + n))
    scores = {"w": layer.sparse.detach().square().sum(dim=1)}
    compact = layer.kept(keep_rows(scores, {"w": row_bits(layer)}, budget)["w"])
    index_bits = len(compact.rows) * math.ceil(math.log2(m))
    stored = 16 * (rank * (m + n) + compact.sparse.numel()) + index_bits
    assert 16 * (1 - ratio) * m * n - row_bits(layer) < stored <= 16 * (1 - ratio) * m * n
    S = torch.zeros(m, n, dtype=torch.float64)
    S[compact.rows] = compact.sparse.detach()
    losparse_error = torch.linalg.norm(W - compact.u.weight @ compact.vt.weight - S)
    u, vt = truncated_svd(W, rank_for_ratio(m, n, ratio))
    assert losparse_error < 0.85 * torch.linalg.norm(W - u @ vt)


# ------------------------------------------------------------------- budget and schedule


def test_keep_rows_takes_the_most_important_rows_that_fit():
    scores = {"a": torch.tensor([5.0, 1.0, 3.0]), "b": torch.tensor([4.0, 0.5])}
    bits = {"a": 10, "b": 30}
    # by importance: a0 (10), b0 (30), a2 (10), a1 (10), b1 (30): 10 + 30 + 10 = 50 fits 55
    keep = keep_rows(scores, bits, budget=55)
    assert keep["a"].tolist() == [True, False, True]
    assert keep["b"].tolist() == [True, False]
    assert not any(k.any() for k in keep_rows(scores, bits, budget=5).values())


@pytest.mark.parametrize("steps", [3, 16, 100, 12272])
def test_schedule_is_the_reference_cubic_between_the_warmups(steps):
    final = 0.3
    initial = max(1, round(INITIAL_WARMUP * steps))
    final_steps = max(1, round(FINAL_WARMUP * steps))
    if steps == 12272:  # the MNLI command: warmup_steps 675, initial 1×, final 5×
        assert (initial, final_steps) == (675, 3375)
    for step in range(steps):
        fraction, prune = kept_fraction(step, steps, final)
        if step < initial:
            assert (fraction, prune) == (1.0, False)
        elif step >= steps - final_steps:
            assert (fraction, prune) == (final, True)
        else:
            progress = (step - initial) / (steps - initial - final_steps)
            assert fraction == pytest.approx(final + (1 - final) * (1 - progress) ** 3)
            assert prune
    assert kept_fraction(steps - 1, steps, final) == (final, True)


def test_sensitivity_averages_each_window_then_smooths_across_windows():
    """The reference's PLATON update with deltaT = 2, β₁ = 0.5, on a one-row S."""
    S = nn.Parameter(torch.tensor([[2.0, -1.0]]))
    sensitivity = Sensitivity(1, beta1=0.5, delta=2, device="cpu")
    grads = [[1.0, 1.0], [3.0, 0.0], [0.5, 2.0], [1.0, 1.0], [0.0, 0.0]]
    entries = [(S.detach() * torch.tensor([g])).abs().mean().item() for g in grads]
    for step, grad in enumerate(grads):
        S.grad = torch.tensor([grad])
        sensitivity.update(step, S)
    window_1 = (entries[0] + entries[1]) / 2  # steps 0, 1
    window_2 = (entries[2] + entries[3]) / 2  # steps 2, 3
    smoothed = 0.5 * (0.5 * (0.5 * 0 + 0.5 * 0) + 0.5 * window_1) + 0.5 * window_2
    assert sensitivity.smoothed.item() == pytest.approx(smoothed)
    assert sensitivity.window.item() == pytest.approx(entries[4])


@pytest.mark.parametrize("value", ["-1", "1", "2"])
def test_steps_below_the_schedule_are_refused(value):
    from mpt_core import registry

    with pytest.raises(SpecError):
        registry.validate(Spec.parse(f"losparse:0.3[steps={value}]"))


# --------------------------------------------------------------------------- the model


def calibration_loss(model, windows) -> float:
    with torch.no_grad():
        return model(windows, labels=windows, use_cache=False).loss.item()


@pytest.mark.parametrize("spec", ["losparse:0.4[steps=0]", "losparse:0.4[steps=6,lr=1e-3]"])
def test_storage_meets_the_budget_and_restores(fresh_tiny, spec, fixed_calibration):
    model = fresh_tiny.model
    shapes = {name: model.get_parameter(name).shape for name in block_linear_names(model)}
    original_hash = state_dict_hash(model)
    total = dense_numel(model)
    snapshot = Snapshot(model)

    footprint = compress(model, Spec.parse(spec), fixed_calibration())

    budget = 16 * 0.6 * sum(m * n for m, n in shapes.values())
    largest_row = max(16 * n + math.ceil(math.log2(m)) for m, n in shapes.values())
    assert budget - largest_row < footprint.compressed_bits <= budget
    layers = [module for module in model.modules() if isinstance(module, LoSparseLinear)]
    assert len(layers) == len(shapes)
    for layer in layers:
        rows = layer.rows.tolist()
        assert rows == sorted(set(rows)) and layer.sparse.shape == (len(rows), layer.in_features)
    assert footprint.bytes < total * 2
    assert torch.isfinite(model(torch.arange(2, 20)[None]).logits).all()

    snapshot.restore(model)
    assert state_dict_hash(model) == original_hash
    assert not any(isinstance(module, LoSparseLinear) for module in model.modules())


def test_training_lowers_the_calibration_loss_below_the_initialisation(
    fresh_tiny, fixed_calibration
):
    model = fresh_tiny.model
    calibration = fixed_calibration()
    windows = calibration.windows(None)
    snapshot, losses = Snapshot(model), {}
    for steps in (0, 12):
        compress(model, Spec.parse(f"losparse:0.5[steps={steps},lr=1e-3]"), calibration)
        losses[steps] = calibration_loss(model, windows)
        snapshot.restore(model)
    assert losses[12] < losses[0] - 0.02


def test_one_shot_prunes_the_rows_the_loss_is_least_sensitive_to(fresh_tiny, fixed_calibration):
    """steps=0 keeps, over all layers, the rows of largest mean |S ⊙ ∂L/∂S|."""
    from mpt_core.lowrank.losparse import one_shot_scores, replace_linears

    model = fresh_tiny.model
    windows = fixed_calibration().windows(None)
    with torch.no_grad():
        layers = replace_linears(model, 0.5, 0.25)
    scores = one_shot_scores(model, layers, windows, batch=4)
    name, layer = next(iter(layers.items()))
    model.zero_grad()
    for param in model.parameters():
        param.requires_grad_(False)
    layer.sparse.requires_grad_(True)
    total = 0
    for start in (0, 4):
        loss = model(windows[start : start + 4], labels=windows[start : start + 4]).loss
        (grad,) = torch.autograd.grad(loss, layer.sparse)
        total = total + (layer.sparse.detach() * grad).abs().mean(dim=1).double() / 2
    torch.testing.assert_close(scores[name], total, rtol=1e-5, atol=1e-12)
