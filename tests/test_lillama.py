"""Lillama: bottom-first rank search, the teacher+student feature loss, local distillation
that improves on its SVD initialisation, the budget and exact restore."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from mpt_core.engine.layerwise import (
    LayerInputs,
    block_linear_names,
    capture_layer0_inputs,
    decoder_layers,
    run_block,
)
from mpt_core.errors import SpecError
from mpt_core.lowrank.factorized import LowRankLinear
from mpt_core.lowrank.lillama import (
    Student,
    candidates,
    distill,
    factorize,
    l1_cos,
    linear_params,
    search_ranks,
    trainable,
)
from mpt_core.models import state_dict_hash
from mpt_core.pipeline import compress
from mpt_core.snapshot import Snapshot
from mpt_core.spec import Spec

pytestmark = pytest.mark.usefixtures("one_thread")
SETTINGS = settings(max_examples=15, deadline=None)
MIN_RANK, STEP = 8, 4  # an eighth and a sixteenth of tiny-llama's hidden size 64


# ----------------------------------------------------------------------------- rank search


def test_candidates_run_bottom_layer_first_and_largest_rank_first(tiny):
    found = candidates(tiny.model, MIN_RANK, STEP)
    assert [(c.layer, -c.rank) for c in found] == sorted((c.layer, -c.rank) for c in found)
    q_ranks = [c.rank for c in found if (c.layer, c.name) == (0, "self_attn.q_proj")]
    assert q_ranks == [28, 24, 20, 16, 12, 8]  # r·(64 + 64) < 64·64: r < 32
    k_ranks = [c.rank for c in found if (c.layer, c.name) == (0, "self_attn.k_proj")]
    assert k_ranks == [20, 16, 12, 8]  # (32 x 64): r < 32 and r·96 < 2048


@pytest.mark.parametrize("ratio", [0.1, 0.3, 0.5])
def test_rank_search_compresses_the_first_block_fully_before_the_next(tiny, ratio):
    model = tiny.model
    ranks = search_ranks(model, ratio, MIN_RANK, STEP)
    dense = linear_params(model)
    kept = {key: ranks[key] * sum(model.get_submodule(f"model.layers.{key[0]}.{key[1]}")
                                  .weight.shape) if key in ranks else params
            for key, params in dense.items()}  # fmt: skip
    total, target = sum(kept.values()), (1 - ratio) * sum(dense.values())
    assert total <= target
    # the last lowering was needed: one rank step less on any linear would miss the target
    largest_step = max(STEP * sum(model.get_parameter(n).shape) for n in block_linear_names(model))
    assert total > target - largest_step
    if any(layer == 1 for layer, _ in ranks):  # layer 0 is then at its minimum everywhere
        first = [c for c in candidates(model, MIN_RANK, STEP) if c.layer == 0]
        smallest = {(c.layer, c.name): c.rank for c in first}
        assert all(ranks[key] == rank for key, rank in smallest.items())


def test_unreachable_ratio_is_a_spec_error(tiny):
    with pytest.raises(SpecError, match="out of reach"):
        search_ranks(tiny.model, 0.7, 16, STEP)


# ------------------------------------------------------------------------------- the loss


@SETTINGS
@given(tokens=st.integers(1, 6), width=st.integers(2, 8), seed=st.integers(0, 10_000))
def test_l1_cos_is_mean_l1_minus_log_sigmoid_cosine(tokens, width, seed):
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(2, tokens, width, generator=generator, dtype=torch.float64)
    y = torch.randn(2, tokens, width, generator=generator, dtype=torch.float64)
    by_hand = 0.0
    for b in range(2):
        for t in range(tokens):
            cosine = torch.dot(a[b, t], y[b, t]) / (a[b, t].norm() * y[b, t].norm())
            by_hand += (a[b, t] - y[b, t]).abs().mean() - torch.log(torch.sigmoid(cosine))
    assert l1_cos(a, y).item() == pytest.approx(by_hand.item() / (2 * tokens), rel=1e-9)
    # its minimum is reached at a = y: log(1 + e^{-1})
    assert l1_cos(y, y).item() == pytest.approx(F.softplus(torch.tensor(-1.0)).item(), rel=1e-6)
    assert l1_cos(a, y) >= l1_cos(y, y)


def test_one_step_adds_the_teacher_and_student_input_gradients(tiny, fixed_calibration):
    block = copy.deepcopy(decoder_layers(tiny.model)[0])
    teacher = copy.deepcopy(block)
    inputs = capture_layer0_inputs(tiny.model, fixed_calibration(nsamples=2).windows(None))
    teacher_in = inputs.hidden
    student_in = teacher_in + 0.1 * torch.randn_like(teacher_in)
    with torch.no_grad():
        target = run_block(teacher, inputs)

    def gradients(mode):
        student = Student(copy.deepcopy(block), teacher, lr=1e-3, mode=mode)
        captured = {}
        student.optimizer.step = lambda: captured.update(
            {n: p.grad.clone() for n, p in student.block.named_parameters()}
        )
        with trainable([student.block]):
            student.step(teacher_in, student_in, inputs.kwargs)
        return captured

    both, alone_t, alone_s = (gradients(m) for m in ("teacher+student", "teacher", "student"))
    assert target.shape == teacher_in.shape
    for name in both:
        torch.testing.assert_close(both[name], alone_t[name] + alone_s[name])
    assert any(not torch.allclose(alone_t[n], alone_s[n]) for n in both)


# --------------------------------------------------------------------------- distillation


def block_errors(model, teachers, windows) -> dict[int, float]:
    """Each student block's l1-cos loss on the teacher's inputs to that block."""
    inputs = capture_layer0_inputs(model, windows)
    blocks, errors = decoder_layers(model), {}
    with torch.no_grad():
        for index in range(max(teachers) + 1):
            target = run_block(teachers.get(index, blocks[index]), inputs)
            if index in teachers:
                errors[index] = l1_cos(run_block(blocks[index], inputs), target).item()
            inputs = LayerInputs(target, inputs.kwargs)
    return errors


def test_distillation_lowers_every_block_error_below_its_svd_initialisation(
    fresh_tiny, fixed_calibration
):
    model = fresh_tiny.model
    windows = fixed_calibration().windows(None)
    inputs = capture_layer0_inputs(model, windows)
    with torch.no_grad():
        teachers, _ = factorize(model, search_ranks(model, 0.5, MIN_RANK, STEP))
    initial = block_errors(model, teachers, windows)
    blocks = decoder_layers(model)
    students = {
        i: Student(blocks[i], t, lr=1e-3, mode="teacher+student") for i, t in teachers.items()
    }  # noqa: E501
    settings = {"steps": 24, "batch": 2}
    with trainable(list(blocks)):
        distill(students, model, inputs, settings)
    distilled = block_errors(model, teachers, windows)
    assert set(distilled) == {0, 1}
    for index in distilled:
        assert distilled[index] < initial[index] - 1e-3, (index, initial, distilled)


def test_the_best_student_is_restored(fresh_tiny, fixed_calibration):
    """A learning rate that wrecks the blocks: the students keep their best (initial) state."""
    model = fresh_tiny.model
    windows = fixed_calibration().windows(None)
    inputs = capture_layer0_inputs(model, windows)
    with torch.no_grad():
        teachers, _ = factorize(model, search_ranks(model, 0.3, MIN_RANK, STEP))
    blocks = decoder_layers(model)
    initial = {i: copy.deepcopy(blocks[i].state_dict()) for i in teachers}
    students = {
        i: Student(blocks[i], t, lr=10.0, mode="teacher+student") for i, t in teachers.items()
    }  # noqa: E501
    with trainable(list(blocks)):
        distill(students, model, inputs, {"steps": 4, "batch": 8})
    for index in teachers:
        for name, tensor in blocks[index].state_dict().items():
            torch.testing.assert_close(tensor, initial[index][name])


# ------------------------------------------------------------------------------ the model


@pytest.mark.parametrize("spec", ["lillama:0.3[steps=0]", "lillama:0.5[steps=3]"])
def test_lillama_meets_the_budget_and_restores(fresh_tiny, spec, fixed_calibration):
    model = fresh_tiny.model
    ratio = Spec.parse(spec).stages[0].ratio
    dense = sum(model.get_parameter(n).numel() for n in block_linear_names(model))
    original_hash = state_dict_hash(model)
    snapshot = Snapshot(model)

    footprint = compress(model, Spec.parse(spec), fixed_calibration())

    stored = sum(model.get_parameter(n).numel() for n in block_linear_names(model))
    factorized = [m for m in model.modules() if isinstance(m, LowRankLinear)]
    assert factorized and stored <= (1 - ratio) * dense
    assert stored > (1 - ratio) * dense - max(
        STEP * (m.in_features + m.out_features) for m in factorized
    )  # noqa: E501
    assert footprint.compressed_numel == sum(
        m.u.weight.numel() + m.vt.weight.numel() for m in factorized
    )  # noqa: E501
    assert torch.isfinite(model(torch.arange(2, 20)[None]).logits).all()

    snapshot.restore(model)
    assert state_dict_hash(model) == original_hash
    assert not any(isinstance(m, LowRankLinear) for m in model.modules())
