"""The coupled structures of a LLaMA block that structured pruning removes whole, shared by
LLM-Pruner and LoRAPrune (a helper module, not a method).

A key/value-head group is the q rows of its query heads, its k and v rows and the o_proj
columns of its query heads; an MLP channel is its gate and up rows and its down_proj
column. ``block_shape`` says what a block holds, ``per_block_ratio`` solves the one
per-block ratio whose removed parameter count is nearest R·N for a method's removal
count, ``keep_head_groups``/``keep_channels`` cut a block to the survivors, and
``record_widths``/``projection_storage`` describe the narrower model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from mpt_core.engine.layerwise import decoder_layers, linear_layers, weight_name
from mpt_core.errors import SpecError
from mpt_core.storage import TensorStorage, dense_numel

# (units in a block, root channels per unit, per-block ratio s) -> units removed
RemovalCount = Callable[[int, int, float], int]


@dataclass(frozen=True)
class BlockShape:
    """What one block can lose: key/value-head groups and MLP channels, and their sizes."""

    groups: int
    group_params: int  # q rows of its query heads, its k and v rows, its o_proj columns
    head_dim: int
    channels: int
    channel_params: int  # its gate and up rows and its down_proj column


def _row_params(linear: nn.Linear) -> int:
    bias = linear.bias.numel() if linear.bias is not None else 0
    return linear.weight.numel() + bias


def block_shape(block: nn.Module) -> BlockShape:
    attention, mlp = block.self_attn, block.mlp
    groups = attention.k_proj.out_features // attention.head_dim
    channels = mlp.gate_proj.out_features
    query_key_value = (attention.q_proj, attention.k_proj, attention.v_proj)
    attention_params = sum(map(_row_params, query_key_value)) + attention.o_proj.weight.numel()
    mlp_params = _row_params(mlp.gate_proj) + _row_params(mlp.up_proj)
    mlp_params += mlp.down_proj.weight.numel()
    return BlockShape(
        groups=groups,
        group_params=attention_params // groups,
        head_dim=attention.head_dim,
        channels=channels,
        channel_params=mlp_params // channels,
    )


def removal(shape: BlockShape, ratio: float, count: RemovalCount) -> tuple[int, int]:
    """(head groups, channels) a block loses at per-block ratio ``ratio``; one of each stays."""
    groups = min(count(shape.groups, shape.head_dim, ratio), shape.groups - 1)
    channels = min(count(shape.channels, 1, ratio), shape.channels - 1)
    return groups, channels


def removed_params(shapes: Sequence[BlockShape], ratio: float, count: RemovalCount) -> int:
    total = 0
    for shape in shapes:
        groups, channels = removal(shape, ratio, count)
        total += groups * shape.group_params + channels * shape.channel_params
    return total


def per_block_ratio(
    model: nn.Module, blocks: Sequence[nn.Module], stage, count: RemovalCount
) -> float:
    """The per-block ratio s whose removed parameter count is nearest R·N."""
    shapes = [block_shape(block) for block in blocks]
    total = dense_numel(model)
    target = stage.ratio * total
    most = removed_params(shapes, 1.0, count)
    if target > most:
        raise SpecError(
            f"{stage} would remove {stage.ratio:.0%} of the parameters, but the "
            f"{len(shapes)} pruned blocks hold at most {most / total:.1%} (one head group and "
            f"one channel stay in each); use a smaller ratio"
        )
    low, high = 0.0, 1.0  # removed(low) < target <= removed(high), unless target is 0
    if removed_params(shapes, low, count) >= target:
        return low
    for _ in range(60):
        middle = (low + high) / 2
        if removed_params(shapes, middle, count) >= target:
            high = middle
        else:
            low = middle
    above = removed_params(shapes, high, count) - target
    below = target - removed_params(shapes, low, count)
    return high if above <= below else low


def _keep_rows(linear: nn.Linear, rows: torch.Tensor) -> None:
    rows = rows.to(linear.weight.device)
    linear.weight = nn.Parameter(linear.weight.detach()[rows].clone())
    if linear.bias is not None:
        linear.bias = nn.Parameter(linear.bias.detach()[rows].clone())
    linear.out_features = len(rows)


def _keep_columns(linear: nn.Linear, columns: torch.Tensor) -> None:
    columns = columns.to(linear.weight.device)
    linear.weight = nn.Parameter(linear.weight.detach()[:, columns].clone())
    linear.in_features = len(columns)


def _expand(units: torch.Tensor, size: int) -> torch.Tensor:
    """Indices of the ``size`` consecutive rows of each unit in ``units``."""
    return (units[:, None] * size + torch.arange(size, device=units.device)).flatten()


def keep_head_groups(attention: nn.Module, keep: torch.Tensor) -> None:
    """Keep only the key/value-head groups ``keep`` (sorted) and their query heads."""
    head_dim = attention.head_dim
    query_rows = _expand(keep, attention.num_key_value_groups * head_dim)
    kv_rows = _expand(keep, head_dim)
    _keep_rows(attention.q_proj, query_rows)
    _keep_rows(attention.k_proj, kv_rows)
    _keep_rows(attention.v_proj, kv_rows)
    _keep_columns(attention.o_proj, query_rows)


def keep_channels(mlp: nn.Module, keep: torch.Tensor) -> None:
    """Keep only the intermediate channels ``keep`` (sorted)."""
    _keep_rows(mlp.gate_proj, keep)
    _keep_rows(mlp.up_proj, keep)
    _keep_columns(mlp.down_proj, keep)


def record_widths(model: nn.Module) -> None:
    """Every block's heads, key/value heads and MLP width, in ``config.layer_widths``."""
    widths = []
    for block in decoder_layers(model):
        attention, head_dim = block.self_attn, block.self_attn.head_dim
        widths.append(
            {
                "num_attention_heads": attention.q_proj.out_features // head_dim,
                "num_key_value_heads": attention.k_proj.out_features // head_dim,
                "intermediate_size": block.mlp.gate_proj.out_features,
            }
        )
    model.config.layer_widths = widths


def projection_storage(blocks: Sequence[tuple[int, nn.Module]]) -> dict[str, TensorStorage]:
    """Dense storage for every linear weight of ``blocks`` (their shapes changed)."""
    return {
        weight_name(index, name): TensorStorage()
        for index, block in blocks
        for name in linear_layers(block)
    }
