"""LoRAPrune: structured pruning guided by LoRA gradients, during LoRA fine-tuning
(Zhang et al., ACL 2024 Findings, arXiv:2305.18403).

LLM-Pruner's Taylor importance |W ⊙ ∂L/∂W| needs the gradient of every pre-trained
weight. LoRAPrune estimates it from the adapters alone: for a LoRA linear
W + (α/r)·B A, the paper's criterion takes
    Ĝ = ∂L/∂B · A + B · ∂L/∂A − ∂L/∂B · ∂L/∂A
as the weight gradient and scores each weight |Ĝ ⊙ (W + (α/r)·B A)|. Scores are summed
per structure (an attention head group over q, k, v rows and o_proj columns; an MLP
channel over gate and up rows and its down_proj column), each projection's vector
normalized to unit L2 norm before the projections add up, and smoothed across steps by
a moving average I ← 0.9·I + 0.1·I_step. Pruning is iterative during the LoRA
fine-tuning: every 10th step the per-block ratio follows a cubic schedule from 0 to
its final value (no pruning in the first 10% of the steps, the final ratio from the
last 10% on), and the least important unmasked structures are masked (their q, k, v,
gate and up outputs multiplied by 0). At the end the adapters are merged and the
masked structures are removed for real.

As the authors' code (``loraprune/utils.py``, ``trainer.py``, ``script/prune.sh``):
adapters on all seven projections, the first int(0.1·L) blocks and the last block
never pruned, n = int(units·ratio) structures masked per block, a step whose scores
are NaN leaves the moving average as it was. Differences: their masks stop just short
of the final ratio (they prune only while the schedule is below it); here the final
ratio is applied once at the first step that reaches it, or after the last step when
the budget is too short for a cool-down. Their code hard-codes 32 heads per
projection, which breaks with grouped-query attention; here an attention structure is
a key/value head with the query heads that read it (one head without GQA, as theirs),
and each projection's score vector is normalized over those groups.

``R`` is the fraction of the model's parameters removed, turned into the final
per-block ratio as LLM-Pruner here does (nearest achievable count, whole head groups,
one head group and one channel kept per block). The fine-tuning budget is explicit:
``steps``, ``rank``, ``lr`` (``mpt_core.engine.lora``); data are the calibration windows.

Keeps its own block loop: structures are scored and masked during whole-model LoRA tuning.
"""

from __future__ import annotations

import torch
from torch import nn

from mpt_core.engine.layerwise import decoder_layers
from mpt_core.engine.lora import (
    LORA_OPTIONS,
    Budget,
    LoRALinear,
    add_adapters,
    finetune,
    merge_adapters,
    seeded,
)
from mpt_core.prune.structure import (
    BlockShape,
    block_shape,
    keep_channels,
    keep_head_groups,
    per_block_ratio,
    projection_storage,
    record_widths,
)
from mpt_core.registry import Option, positive_int, register
from mpt_core.storage import TensorStorage

PRUNE_EVERY = 10
WARMUP, COOLDOWN = 0.1, 0.1
MOMENTUM = 0.9
FROZEN_FRACTION = 0.1


def loraprune_count(units: int, _unit_size: int, ratio: float) -> int:
    """Structures the authors' ``local_prune`` masks in a block: int(units · ratio)."""
    return int(units * ratio)


def pruned_block_indices(layers: int) -> range:
    """Blocks the authors prune: all but the first int(0.1·L) and the last."""
    return range(int(layers * FROZEN_FRACTION), layers - 1)


def sparsity_at(step: int, steps: int, final: float) -> float:
    """The authors' cubic schedule from 0: flat during warm-up, final during cool-down."""
    if step <= WARMUP * steps:
        return 0.0
    if step > steps - COOLDOWN * steps:
        return final
    ramp = steps - (WARMUP + COOLDOWN) * steps
    remaining = 1 - (step - WARMUP * steps) / ramp
    return final - final * remaining**3


def lora_gradient(adapter: LoRALinear) -> torch.Tensor:
    """The paper's weight-gradient estimate Ĝ = ∇B·A + B·∇A − ∇B·∇A."""
    A, B = adapter.lora_A.detach(), adapter.lora_B.detach()
    gA, gB = adapter.lora_A.grad, adapter.lora_B.grad
    return gB @ A + B @ gA - gB @ gA


def weight_sensitivity(adapter: LoRALinear) -> torch.Tensor:
    """|Ĝ ⊙ (W + (α/r)·B A)| for every weight of one adapted linear."""
    merged = adapter.base.weight.detach().float() + adapter.delta().detach()
    return (lora_gradient(adapter) * merged).abs()


def _normalized(scores: torch.Tensor) -> torch.Tensor:
    return scores / (torch.linalg.norm(scores) + 1e-8)


def _rows(adapter: LoRALinear, units: int) -> torch.Tensor:
    return _normalized(weight_sensitivity(adapter).view(units, -1).sum(1))


def _columns(adapter: LoRALinear, units: int) -> torch.Tensor:
    sensitivity = weight_sensitivity(adapter)
    return _normalized(sensitivity.view(sensitivity.shape[0], units, -1).sum((0, 2)))


def block_sensitivity(block: nn.Module, groups: int, channels: int):
    """(head-group scores, channel scores) of one block at this step."""
    attention, mlp = block.self_attn, block.mlp
    heads = sum(_rows(attention.get_submodule(n), groups) for n in ("q_proj", "k_proj", "v_proj"))
    heads = heads + _columns(attention.o_proj, groups)
    mlp_scores = _rows(mlp.gate_proj, channels) + _rows(mlp.up_proj, channels)
    return heads, mlp_scores + _columns(mlp.down_proj, channels)


class BlockMasks:
    """One pruned block's structure masks, its moving-average importance, and the hooks
    that apply the masks to the outputs of q, k, v, gate and up."""

    def __init__(self, block: nn.Module, shape: BlockShape):
        self.block, self.groups, self.channels = block, shape.groups, shape.channels
        like = dict(device=block.self_attn.k_proj.base.weight.device, dtype=torch.float32)
        self.head_mask = torch.ones(shape.groups, **like)
        self.channel_mask = torch.ones(shape.channels, **like)
        self.head_score = torch.zeros(shape.groups, **like)
        self.channel_score = torch.zeros(shape.channels, **like)
        query_rows = block.self_attn.num_key_value_groups * shape.head_dim
        attention, mlp = block.self_attn, block.mlp
        self.handles = [
            self._hook(attention.q_proj, lambda: self.head_mask, query_rows),
            self._hook(attention.k_proj, lambda: self.head_mask, shape.head_dim),
            self._hook(attention.v_proj, lambda: self.head_mask, shape.head_dim),
            self._hook(mlp.gate_proj, lambda: self.channel_mask, 1),
            self._hook(mlp.up_proj, lambda: self.channel_mask, 1),
        ]

    @staticmethod
    def _hook(module: nn.Module, mask, rows_per_unit: int):
        def apply(_module, _args, output):
            return output * mask().repeat_interleave(rows_per_unit).to(output.dtype)

        return module.register_forward_hook(apply)

    def update(self) -> None:
        """Fold this step's scores into the moving average (a NaN step is skipped)."""
        heads, channels = block_sensitivity(self.block, self.groups, self.channels)
        if torch.isnan(heads).any() or torch.isnan(channels).any():
            return
        self.head_score = MOMENTUM * self.head_score + (1 - MOMENTUM) * heads
        self.channel_score = MOMENTUM * self.channel_score + (1 - MOMENTUM) * channels

    def prune_to(self, ratio: float) -> None:
        """Mask the least important unmasked structures until int(units·ratio) are masked."""
        self.head_mask = _masked_to(self.head_mask, self.head_score, ratio)
        self.channel_mask = _masked_to(self.channel_mask, self.channel_score, ratio)

    def remove(self) -> None:
        """Drop the hooks and delete the masked structures (adapters already merged)."""
        for handle in self.handles:
            handle.remove()
        keep_head_groups(self.block.self_attn, self.head_mask.nonzero().flatten())
        keep_channels(self.block.mlp, self.channel_mask.nonzero().flatten())


def _masked_to(mask: torch.Tensor, score: torch.Tensor, ratio: float) -> torch.Tensor:
    """``mask`` with the lowest-scoring unmasked units masked, up to int(units·ratio) masked
    in all and at least one unit left."""
    wanted = min(loraprune_count(len(mask), 1, ratio), len(mask) - 1)
    missing = wanted - int((mask == 0).sum())
    if missing <= 0:
        return mask
    candidates = torch.where(mask > 0, score, torch.full_like(score, torch.inf))
    order = torch.argsort(candidates, stable=True)[:missing]
    mask = mask.clone()
    mask[order] = 0
    return mask


class IterativePruner:
    """The per-step work LoRAPrune adds to LoRA fine-tuning: score, then prune on schedule."""

    def __init__(self, blocks: list[nn.Module], shapes: list[BlockShape], final: float, steps: int):
        self.blocks = [BlockMasks(block, shape) for block, shape in zip(blocks, shapes)]
        self.final, self.steps = final, steps
        self.ratio = 0.0

    def __call__(self, step: int) -> None:
        for masks in self.blocks:
            masks.update()
        ratio = sparsity_at(step, self.steps, self.final)
        on_schedule = step % PRUNE_EVERY == 0 and ratio > self.ratio
        if on_schedule or (ratio >= self.final > self.ratio):
            self._prune_to(ratio)

    def _prune_to(self, ratio: float) -> None:
        for masks in self.blocks:
            masks.prune_to(ratio)
        self.ratio = ratio

    def finish(self) -> None:
        """Reach the final ratio if the schedule did not, then remove what is masked."""
        if self.ratio < self.final:
            self._prune_to(self.final)
        for masks in self.blocks:
            masks.remove()


@register(
    "loraprune",
    family="structured",
    levels={"ratio"},
    needs_calibration=True,
    options={"nsamples": Option(positive_int, 10, "calibration windows to fine-tune on")}
    | LORA_OPTIONS,
)
def loraprune(model, stage, settings, calibration) -> dict[str, TensorStorage]:
    layers = decoder_layers(model)
    indices = pruned_block_indices(len(layers))
    blocks = [layers[index] for index in indices]
    shapes = [block_shape(block) for block in blocks]
    final = per_block_ratio(model, blocks, stage, loraprune_count)
    budget = Budget.from_settings(settings)
    windows = calibration.windows(settings)
    with seeded(budget.seed, next(model.parameters()).device):
        add_adapters(model, budget.rank)
        pruner = IterativePruner(blocks, shapes, final, budget.steps)
        finetune(model, windows, budget, after_backward=pruner)
    storage = merge_adapters(model)
    pruner.finish()
    record_widths(model)
    return storage | projection_storage([(index, layers[index]) for index in indices])
