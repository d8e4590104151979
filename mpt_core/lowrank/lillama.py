"""Lillama: local distillation of low-rank factors (Sy, Cerisara and Illina, "Lillama: Large
Language Models Compression via Low-Rank Feature Distillation", NAACL 2025, arXiv:2412.16719).

Pretrained weights are not low-rank but activations are, so Lillama starts from the SVD
factors of each linear and then trains them, one-shot and locally, to reproduce the
teacher's block outputs: each compressed decoder block is a student trained on its own,
gradients never cross blocks. The loss of a student output a against the teacher's y is
mean_tokens(mean_channels |a − y| − log σ(cos(a, y))), taken twice per step: on the
teacher's input to the block (teacher term) and on the previous student block's output
(student term); their gradients add before one AdamW step.

Ranks are allocated bottom-first: the candidate ranks of every linear (from ``min_rank`` up
to its smaller side in steps of ``rank_step``, only those that save parameters) are taken
in order of (layer ascending, rank descending), each lowering its linear's rank, until
the parameters meet the budget; so the first blocks are compressed to the minimum rank
before later blocks are touched, and later blocks may stay dense.

As the authors' code (yaya-sy/lillama: ``RankSearcher`` with ``strategy="bottom"``,
``LowRankLinear._init_svd`` (√Σ on both factors), ``Distiller.l1_cos``,
``distillation_loss="teacher+student"``, one AdamW per block with lr 8.6e-5 and torch's
default weight decay over all the student block's parameters, and the student of lowest
loss restored at the end), with these differences:

- the data is the calibration windows, ``steps`` batches of ``batch`` windows taken in turn
  (theirs: one pass over millions of tokens in batches of 8), an explicit CPU budget;
- ``min_rank`` and ``rank_step`` are fractions of the hidden size: their CLI defaults
  (1024 and 256) are a quarter and a sixteenth of a 4096-wide model; the default minimum
  here is an eighth, since a quarter caps SmolLM2-135M below R = 0.6;
- ``R`` is the fraction of the block linears' parameters removed (theirs: of the whole
  model, embeddings included).

The distillation keeps its own loop over the blocks: each step carries a teacher and a
student stream through every block up to the last student, which no engine loop does.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mpt_core.engine.layerwise import (
    LayerInputs,
    LinearSite,
    _fit_batch,
    block_linears,
    capture_layer0_inputs,
    decoder_layers,
)
from mpt_core.errors import SpecError
from mpt_core.lowrank.factorized import check_ratio, replace_linear, truncated_svd
from mpt_core.registry import Option, float_in, one_of, positive_float, positive_int, register
from mpt_core.storage import TensorStorage

LOSSES = ("teacher", "student", "teacher+student")
FRACTION = float_in(0, 1, low_open=True, high_open=True)


def _steps(value: str) -> int:
    """registry.nonnegative_int with a message that says what 0 means."""
    number = int(value)
    if number < 0:
        raise ValueError("must be 0 (SVD initialisation only) or more")
    return number


# ---------------------------------------------------------------------------- rank search


@dataclass(frozen=True)
class Candidate:
    layer: int
    name: str
    rank: int
    params: int


def candidates(model: nn.Module, min_rank: int, step: int) -> list[Candidate]:
    """Every (linear, rank) that saves parameters, bottom layers and large ranks first."""
    found = []
    for site, linear in block_linears(model):
        m, n = linear.weight.shape
        found += [
            Candidate(site.index, site.name, rank, rank * (m + n))
            for rank in range(min_rank, min(m, n), step)
            if rank * (m + n) < m * n
        ]
    return sorted(found, key=lambda candidate: (candidate.layer, -candidate.rank))


def linear_params(model: nn.Module) -> dict[tuple[int, str], int]:
    return {(site.index, site.name): linear.weight.numel() for site, linear in block_linears(model)}


def search_ranks(model: nn.Module, ratio: float, min_rank: int, step: int) -> dict:
    """{(layer, name): rank}: ranks lowered bottom-first until (1 − R) of the block linears'
    parameters remain (the reference's ``RankSearcher.search_ranks``)."""
    params = linear_params(model)
    dense = sum(params.values())
    ranks = {}
    queue = candidates(model, min_rank, step)
    while sum(params.values()) > (1 - ratio) * dense:
        if not queue:
            reachable = 1 - sum(params.values()) / dense
            raise SpecError(
                f"lillama:{ratio} is out of reach with min_rank {min_rank}: at most "
                f"{reachable:.3f} of the parameters go; use a smaller ratio or min_rank"
            )
        candidate = queue.pop(0)
        key = (candidate.layer, candidate.name)
        if candidate.params <= params[key]:
            params[key], ranks[key] = candidate.params, candidate.rank
    return ranks


# --------------------------------------------------------------------------- distillation


def l1_cos(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """mean over tokens of (mean |a − y| over channels − log σ(cos(a, y)))."""
    l1 = (student - teacher).abs().mean(dim=-1)
    cosine = F.logsigmoid(F.cosine_similarity(student, teacher, dim=-1))
    return (l1 - cosine).mean()


def _forward(block: nn.Module, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
    out = block(hidden, **_fit_batch(kwargs, hidden.shape[0]))
    return out[0] if isinstance(out, tuple) else out


class Student:
    """One compressed block, its frozen teacher, its optimizer and its best state so far."""

    def __init__(self, block: nn.Module, teacher: nn.Module, lr: float, mode: str):
        self.block, self.teacher, self.mode = block, teacher, mode
        self.optimizer = torch.optim.AdamW(block.parameters(), lr=lr)
        self.best_loss, self.best_state = float("inf"), None

    def step(self, teacher_in, student_in, kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """One update on both inputs; returns (teacher output, student output)."""
        with torch.no_grad():
            target = _forward(self.teacher, teacher_in, kwargs)
        with torch.enable_grad():
            losses = {}
            if "teacher" in self.mode:
                losses["teacher"] = l1_cos(_forward(self.block, teacher_in, kwargs), target)
            student_out = _forward(self.block, student_in, kwargs)
            if "student" in self.mode:
                losses["student"] = l1_cos(student_out, target)
            sum(losses.values()).backward()
        # the reference keeps the parameters that gave the lowest student-input loss
        watched = losses["student" if "student" in self.mode else "teacher"].item()
        if watched < self.best_loss:
            self.best_loss = watched
            self.best_state = {k: v.detach().clone() for k, v in self.block.state_dict().items()}
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return target, student_out.detach()

    def restore_best(self) -> None:
        if self.best_state is not None:
            self.block.load_state_dict(self.best_state)


def distill(students: dict[int, Student], model, inputs: LayerInputs, settings) -> None:
    """``steps`` batches through every block up to the last student, each student updated
    on the teacher's and on the students' own activations."""
    blocks = decoder_layers(model)
    last = max(students)
    hidden = inputs.hidden
    for step in range(settings["steps"]):
        index = torch.arange(settings["batch"], device=hidden.device)
        index = (index + step * settings["batch"]) % len(hidden)
        teacher_in = student_in = hidden[index]
        for layer in range(last + 1):
            if layer in students:
                teacher_in, student_in = students[layer].step(teacher_in, student_in, inputs.kwargs)
            else:
                with torch.no_grad():
                    teacher_in = _forward(blocks[layer], teacher_in, inputs.kwargs)
                    student_in = _forward(blocks[layer], student_in, inputs.kwargs)
    for student in students.values():
        student.restore_best()


@contextmanager
def trainable(blocks: list[nn.Module]):
    """Gradients for every parameter of the student blocks (the reference unfreezes the whole
    block), flags restored afterwards."""
    params = [param for block in blocks for param in block.parameters()]
    flags = [param.requires_grad for param in params]
    try:
        for param in params:
            param.requires_grad_(True)
        yield
    finally:
        for param, flag in zip(params, flags):
            param.requires_grad_(flag)


def factorize(model: nn.Module, ranks: dict) -> tuple[dict[int, nn.Module], dict]:
    """SVD-initialised factors for the searched ranks; returns each touched block's dense
    copy (its teacher) and the storage of the new factors."""
    blocks = decoder_layers(model)
    teachers = {layer: copy.deepcopy(blocks[layer]) for layer in sorted({i for i, _ in ranks})}
    storage = {}
    for (layer, name), rank in ranks.items():
        u, vt = truncated_svd(blocks[layer].get_submodule(name).weight.detach(), rank)
        storage |= replace_linear(model, LinearSite(layer, name), u, vt)
    for teacher in teachers.values():
        teacher.requires_grad_(False)
    return teachers, storage


@register(
    "lillama",
    family="lowrank",
    levels={"ratio"},
    needs_calibration=True,
    options={
        "steps": Option(_steps, 16, "distillation steps; 0: the SVD initialisation alone"),
        "batch": Option(positive_int, 1, "calibration windows per step"),
        "lr": Option(positive_float, 8.6e-5, "AdamW learning rate (the reference's)"),
        "loss": Option(one_of(LOSSES), "teacher+student", "inputs the students are trained on"),
        "min_rank": Option(FRACTION, 1 / 8, "smallest rank, as a fraction of the hidden size"),
        "rank_step": Option(FRACTION, 1 / 16, "rank spacing, as a fraction of the hidden size"),
        "nsamples": Option(positive_int, 16, "calibration windows"),
    },
)
def lillama(model, stage, settings, calibration) -> dict[str, TensorStorage]:
    check_ratio(stage.ratio, "lillama")
    if stage.ratio == 0:
        return {}
    hidden = model.config.hidden_size
    min_rank = max(1, round(settings["min_rank"] * hidden))
    step = max(1, round(settings["rank_step"] * hidden))
    ranks = search_ranks(model, stage.ratio, min_rank, step)
    windows = calibration.windows(settings)
    inputs = capture_layer0_inputs(model, windows)
    with torch.no_grad():
        teachers, storage = factorize(model, ranks)
    if settings["steps"] > 0:
        blocks = decoder_layers(model)
        students = {
            layer: Student(blocks[layer], teacher, settings["lr"], settings["loss"])
            for layer, teacher in teachers.items()
        }
        with trainable([blocks[layer] for layer in students]):
            distill(students, model, inputs, settings)
    return storage
