"""LoRA fine-tuning of a compressed model on calibration text (Hu et al., ICLR 2022,
arXiv:2106.09685), the recovery step of LLM-Pruner, depth pruning's healing and LoRAPrune.

Every chosen ``nn.Linear`` of the decoder blocks is wrapped: y = W x + (α/r)·B A x, with
A (r × in) drawn as PEFT does (Kaiming-uniform, a = √5), B (out × r) zero, so training
starts from the model itself; only A and B train. Training is causal-LM loss on the
calibration windows cut into chunks of ``CHUNK`` tokens, one chunk a step, for an
explicit budget of steps, with the optimizer settings of the HF ``Trainer`` that the
authors' scripts use (AdamW without weight decay, gradient norm clipped to 1,
transformers' linear warm-up/decay schedule); their 100 warm-up steps become a tenth
of the budget.
Afterwards (α/r)·B A is added into W and the wrapper is removed: the model has its own
architecture again, with changed weights.

Defaults follow LLM-Pruner's ``post_training.py`` (r = 8, α = 16, dropout 0.05, all
seven projections) and its argument default lr = 3e-4; the budget (``steps``, ``rank``,
``lr``) is an option of every method that uses LoRA, so it is recorded with the result.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mpt_core.engine.layerwise import decoder_layers, module_name, weight_name
from mpt_core.engine.modules import replace_module
from mpt_core.registry import Option, positive_float, positive_int
from mpt_core.storage import TensorStorage

CHUNK = 128  # tokens per training sequence (the authors train on 256-token prompts)
DROPOUT = 0.05
MAX_GRAD_NORM = 1.0
WARMUP_FRACTION = 0.1
ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


def recovery(value: str) -> str:
    """Option parser: fine-tune after pruning with LoRA, or not."""
    if value not in ("none", "lora"):
        raise ValueError("must be none or lora")
    return value


LORA_OPTIONS = {
    "steps": Option(positive_int, 100, "LoRA optimizer steps (one chunk of 128 tokens each)"),
    "rank": Option(positive_int, 8, "LoRA rank r (alpha = 2r)"),
    "lr": Option(positive_float, 3e-4, "LoRA learning rate (AdamW)"),
}


@dataclass(frozen=True)
class Budget:
    """How much LoRA training a method spends: the recorded options plus the seed."""

    steps: int
    rank: int
    lr: float
    seed: int = 0

    @classmethod
    def from_settings(cls, settings: dict) -> Budget:
        return cls(settings["steps"], settings["rank"], settings["lr"], settings.get("seed", 0))


class LoRALinear(nn.Module):
    """A frozen linear plus a trainable low-rank update (α/r)·B A."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.scaling = alpha / rank
        like = dict(device=base.weight.device, dtype=torch.float32)
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, **like))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, **like))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def delta(self) -> torch.Tensor:
        """The update the adapter adds to the weight: (α/r)·B A."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dropped = F.dropout(x, DROPOUT, self.training).to(self.lora_A.dtype)
        update = F.linear(F.linear(dropped, self.lora_A), self.lora_B) * self.scaling
        return self.base(x) + update.to(x.dtype)


def add_adapters(
    model: nn.Module, rank: int, targets: Iterable[str] = ALL_PROJECTIONS
) -> dict[str, LoRALinear]:
    """Wrap every block linear named in ``targets``; returns the adapters by module path."""
    targets = set(targets)
    adapters = {}
    for index, block in enumerate(decoder_layers(model)):
        for path, module in list(block.named_modules()):
            if path.rpartition(".")[2] in targets and isinstance(module, nn.Linear):
                adapter = LoRALinear(module, rank, alpha=2 * rank).train(module.training)
                replace_module(block, path, adapter)
                adapters[module_name(index, path)] = adapter
    return adapters


@torch.no_grad()
def merge_adapters(model: nn.Module) -> dict[str, TensorStorage]:
    """W ← W + (α/r)·B A for every adapter, which is then replaced by its linear again.

    Returns the storage of every merged weight (dense, as the model's own)."""
    merged = {}
    for index, block in enumerate(decoder_layers(model)):
        for path, module in list(block.named_modules()):
            if isinstance(module, LoRALinear):
                weight = module.base.weight
                weight += module.delta().to(weight.dtype)
                replace_module(block, path, module.base)
                merged[weight_name(index, path)] = TensorStorage()
    return merged


def training_chunks(windows: torch.Tensor, length: int = CHUNK) -> torch.Tensor:
    """The windows cut into consecutive chunks of ``length`` tokens (whole windows when
    they are shorter); a shorter tail of a window is dropped."""
    length = min(length, windows.shape[1])
    usable = windows.shape[1] // length * length
    return windows[:, :usable].reshape(-1, length)


def shuffled(chunks: torch.Tensor, seed: int) -> Iterator[torch.Tensor]:
    """The chunks in a fresh random order every epoch, for as long as asked. The order is
    drawn on the host (it only picks chunks), so a seed gives one order on every device."""
    order = torch.Generator(device="cpu").manual_seed(seed)
    while True:
        for index in torch.randperm(len(chunks), generator=order, device="cpu").tolist():
            yield chunks[index]


@contextlib.contextmanager
def seeded(seed: int, device: torch.device):
    """Draw adapter initializations and dropout masks from ``seed`` without disturbing the
    caller's random state."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def frozen_base(model: nn.Module):
    """Only adapter parameters train; every other parameter's flag comes back afterwards."""
    flags = {param: param.requires_grad for param in model.parameters()}
    for name, param in model.named_parameters():
        param.requires_grad_("lora_" in name)
    try:
        yield
    finally:
        for param, flag in flags.items():
            param.requires_grad_(flag)


def finetune(
    model: nn.Module,
    windows: torch.Tensor,
    budget: Budget,
    after_backward: Callable[[int], None] | None = None,
) -> list[float]:
    """Train the adapters already in ``model`` for ``budget.steps`` steps; returns the losses.

    ``after_backward(step)`` runs once the step's gradients are clipped and before the
    optimizer uses them (LoRAPrune reads the adapter gradients there)."""
    from transformers import get_linear_schedule_with_warmup  # heavy: only when training

    device = next(model.parameters()).device
    params = [p for name, p in model.named_parameters() if "lora_" in name]
    optimizer = torch.optim.AdamW(params, lr=budget.lr, weight_decay=0.0)
    scheduler = get_linear_schedule_with_warmup(
        optimizer, int(WARMUP_FRACTION * budget.steps), budget.steps
    )
    stream = shuffled(training_chunks(windows), budget.seed)
    losses = []
    was_training = model.training
    model.train()
    try:
        with frozen_base(model):
            for step, chunk in zip(range(budget.steps), stream):
                ids = chunk[None].to(device)
                loss = model(ids, labels=ids, use_cache=False).loss
                loss.backward()
                nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
                if after_backward is not None:
                    after_backward(step)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(loss.item())
    finally:
        model.train(was_training)
    return losses


def lora_finetune(
    model: nn.Module,
    windows: torch.Tensor,
    budget: Budget,
    targets: Iterable[str] = ALL_PROJECTIONS,
) -> dict[str, TensorStorage]:
    """Add adapters, train them on ``windows`` and merge them: the whole recovery step.

    Returns the storage of every weight the merge changed."""
    device = next(model.parameters()).device
    with seeded(budget.seed, device):
        add_adapters(model, budget.rank, targets)
        finetune(model, windows, budget)
    return merge_adapters(model)
