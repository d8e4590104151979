"""LLM-Pruner: structural pruning of coupled groups by first-order Taylor importance
(Ma et al., NeurIPS 2023, arXiv:2305.11627).

A group is a set of parameters that must go together for the network to stay whole:
an attention head is its q, k, v rows and its o_proj columns; an MLP channel is its
gate and up rows and its down_proj column. A group's importance is the first-order
Taylor estimate of the loss change when it is zeroed, summed element-wise over the
group: I = Σ |w · ∂L/∂w| (the authors' ``--pruner_type taylor --taylor param_first``
with ``--grouping_strategy sum``), with L the next-token loss on calibration windows.
In every pruned block the least important heads and channels are removed (the
reference's block-wise, local pruning: one ratio for every block, one shot).

As the authors' ``hf_prune.py`` / ``llama3.py``:
- the first ``first`` (3) and the last ``last`` (1) blocks are not pruned (their
  ``block_*_layer_start`` = 3, ``block_*_layer_end`` = L − 1 defaults; the README's
  LLaMA commands use 4 and L − 2); a model too shallow to keep both and still prune a
  block (the 2-block tiny model) is pruned in every block;
- with grouped-query attention a group is a key/value head with the query heads that
  read it (``llama3.py`` roots the groups at ``k_proj``); with one key/value head per
  query head that is one head, as ``hf_prune.py``;
- the count removed in a block for the per-block ratio s follows their
  ``MetaPruner``: n = C − int(C·(1 − s)) of the C root channels, in whole heads
  (n // head_dim) for attention; at least one head group and one channel stay.
One deliberate difference: with grouped-query attention the reference sums the query
side of the importance over the query heads h, h + G, h + 2G, … of key/value head h
(it folds the query channels with a stride of the key/value width) although it
removes query heads h·n_rep … h·n_rep + n_rep − 1; here a group's importance is summed
over exactly the parameters it removes, as the paper defines it.

``R`` is the fraction of the model's parameters removed (the paper's "pruning ratio",
embeddings included). The per-block ratio s is solved for: the s whose removed
parameter count is nearest R·N. Whole heads make that count a step function of s, so
the achieved fraction can miss R by up to half a step, where one step is one MLP
channel in every pruned block or, where s crosses a head boundary, one head group in
every pruned block. A ratio beyond what the pruned blocks hold is a SpecError.
``recover=lora`` fine-tunes the pruned model with LoRA (``mpt_core.engine.lora``), the
paper's recovery stage; ``none`` gives the study's "w/o" rows.

The model really becomes narrower: the projections lose rows and columns, and
``config.layer_widths`` records every block's heads, key/value heads and MLP width
(LLaMA's config has one width for all blocks). The coupled structures, the per-block
ratio solver and the cutting are ``mpt_core.prune.structure``, shared with LoRAPrune.

Keeps its own block loop: whole-model gradients score the heads and channels each block loses.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mpt_core.engine.layerwise import decoder_layers
from mpt_core.engine.lora import LORA_OPTIONS, Budget, lora_finetune, recovery
from mpt_core.prune.structure import (
    block_shape,
    keep_channels,
    keep_head_groups,
    per_block_ratio,
    projection_storage,
    record_widths,
    removal,
)
from mpt_core.registry import Option, nonnegative_int, positive_int, register
from mpt_core.storage import TensorStorage


def reference_count(units: int, unit_size: int, ratio: float) -> int:
    """Units LLM-Pruner's MetaPruner removes: n = C − int(C·(1 − s)) root channels, whole units."""
    channels = units * unit_size
    return (channels - int(channels * (1 - ratio))) // unit_size


def pruned_blocks(model: nn.Module, first: int, last: int) -> list[tuple[int, nn.Module]]:
    """(index, block) of the blocks pruned: all but the first ``first`` and last ``last``,
    or every block when the model is too shallow to keep those and still prune one."""
    layers = decoder_layers(model)
    indices = range(len(layers))
    if first + last < len(layers):
        indices = range(first, len(layers) - last)
    return [(index, layers[index]) for index in indices]


def projections(block: nn.Module) -> list[nn.Linear]:
    attention, mlp = block.self_attn, block.mlp
    return [
        attention.q_proj,
        attention.k_proj,
        attention.v_proj,
        attention.o_proj,
        mlp.gate_proj,
        mlp.up_proj,
        mlp.down_proj,
    ]


def accumulate_gradients(model: nn.Module, blocks: Sequence[nn.Module], windows: torch.Tensor):
    """∂L/∂W into ``.grad`` of every projection of ``blocks``; L is the mean next-token loss
    over all windows (one window a pass; their gradients add up to the batch's)."""
    weights = [linear.weight for block in blocks for linear in projections(block)]
    flags = {param: param.requires_grad for param in model.parameters()}
    for param in model.parameters():
        param.requires_grad_(False)
    for weight in weights:
        weight.requires_grad_(True)
        weight.grad = None
    device = next(model.parameters()).device
    try:
        for ids in windows:
            ids = ids[None].to(device)
            loss = model(ids, labels=ids, use_cache=False).loss / len(windows)
            loss.backward()
    finally:
        for param, flag in flags.items():
            param.requires_grad_(flag)


def _salience(linear: nn.Linear) -> torch.Tensor:
    """|w · ∂L/∂w| element-wise, in float32."""
    return (linear.weight.float() * linear.weight.grad.float()).abs()


def _row_sums(linear: nn.Linear, units: int) -> torch.Tensor:
    """Salience summed over each of ``units`` equal, consecutive blocks of output rows."""
    return _salience(linear).view(units, -1).sum(1)


def _column_sums(linear: nn.Linear, units: int) -> torch.Tensor:
    """Salience summed over each of ``units`` equal, consecutive blocks of input columns."""
    return _salience(linear).view(linear.out_features, units, -1).sum((0, 2))


def head_group_importance(attention: nn.Module) -> torch.Tensor:
    """Σ |w·g| over each key/value-head group: the q rows of its query heads, its k and v
    rows, the o_proj columns of its query heads (query head j reads key/value head
    j // n_rep, so a group's query rows and o columns are consecutive)."""
    groups = attention.k_proj.out_features // attention.head_dim
    rows = sum(
        _row_sums(linear, groups)
        for linear in (attention.q_proj, attention.k_proj, attention.v_proj)
    )
    return rows + _column_sums(attention.o_proj, groups)


def channel_importance(mlp: nn.Module) -> torch.Tensor:
    """Σ |w·g| over each intermediate channel: its gate and up rows, its down_proj column."""
    channels = mlp.gate_proj.out_features
    rows = _row_sums(mlp.gate_proj, channels) + _row_sums(mlp.up_proj, channels)
    return rows + _column_sums(mlp.down_proj, channels)


def survivors(importance: torch.Tensor, count: int) -> torch.Tensor:
    """Sorted indices of the units that stay when the ``count`` least important go."""
    order = torch.argsort(importance, stable=True)
    return order[count:].sort().values


def prune_block(block: nn.Module, ratio: float) -> None:
    """Remove the least important head groups and channels of one block (gradients set)."""
    groups, channels = removal(block_shape(block), ratio, reference_count)
    attention, mlp = block.self_attn, block.mlp
    keep_head_groups(attention, survivors(head_group_importance(attention), groups))
    keep_channels(mlp, survivors(channel_importance(mlp), channels))


@register(
    "llm_pruner",
    family="structured",
    levels={"ratio"},
    needs_calibration=True,
    options={
        "nsamples": Option(positive_int, 10, "calibration windows for the Taylor gradients"),
        "first": Option(nonnegative_int, 3, "leading blocks never pruned"),
        "last": Option(nonnegative_int, 1, "trailing blocks never pruned"),
        "recover": Option(recovery, "none", "LoRA fine-tuning after pruning: none or lora"),
    }
    | LORA_OPTIONS,
)
def llm_pruner(model, stage, settings, calibration) -> dict[str, TensorStorage]:
    windows = calibration.windows(settings)
    blocks = pruned_blocks(model, settings["first"], settings["last"])
    ratio = per_block_ratio(model, [block for _, block in blocks], stage, reference_count)
    accumulate_gradients(model, [block for _, block in blocks], windows)
    for _, block in blocks:
        prune_block(block, ratio)
    record_widths(model)
    storage = projection_storage(blocks)
    if settings["recover"] == "lora":
        storage |= lora_finetune(model, windows, Budget.from_settings(settings))
    return storage
