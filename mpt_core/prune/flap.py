"""FLAP: fluctuation-based adaptive structured pruning (An et al., AAAI 2024, arXiv:2312.11983).

A channel whose input hardly varies over the calibration tokens can be replaced by its
mean: the output projection then adds W[:, j]·mean(x_j) as a bias and the channel goes.
FLAP scores every input channel j of o_proj and down_proj by its fluctuation, the
sample variance of x_j over the calibration tokens weighted by the squared norm of the
weight column it feeds (the paper's Eq. 5; "WIFV", the reference's default metric). The
scores are standardized within each layer and module (mean 0, std 1 over the layer's
channels), attention channels are pooled into heads, and heads and MLP channels of all
layers compete in one ranking weighted by their parameter counts ("AL-AM", the default
structure): the best-scored units whose parameters come closest to (1 − R) of the
blocks' linear parameters stay. The removed channels' mean contribution becomes the
bias of o_proj/down_proj (LLaMA has none: one is added), so the pruned layer's mean
output on the calibration data is the dense one's. The model really becomes narrower
and layers may differ in width; a layer that loses every head keeps only that bias.

As the authors' ``lib/prune.py`` (CASIA-IVA-Lab/FLAP): statistics come from one pass of
the dense model (all layers scored before any is pruned); the attention score is the
square of WIFV before standardization; a head's score is the mean of its standardized
channel scores; a head weighs 4·d·head_dim parameters against 3·d for an MLP channel.
Three deliberate differences. (1) The fluctuation is the exact unbiased variance over
all calibration tokens, as the paper defines it; the reference's running estimate drops
the first sample and, through an in-place aliasing of the old and new running means,
scales the rest slightly differently, which standardization mostly absorbs. (2) The
reference keeps the units ranked strictly above the one where the cumulative parameter
count is closest to the target, so it always removes that one unit too (one head even
at R = 0); here the kept prefix is the one closest to the target. (3) The reference
handles multi-head attention only; for grouped-query attention (SmolLM2, tiny-llama) the
unit is a key/value group, its query heads and their o_proj columns, scored by the mean
over all its channels: a query head alone cannot go without breaking the group layout.
Calibration follows the harness (``calib``, ``nsamples`` windows of the run's seqlen), not
the reference's 1024 WikiText-2 windows of 128 tokens.

``R`` is the fraction of the decoder blocks' linear parameters removed (the reference's
``pruning_ratio``); embeddings, norms and the head stay, and the added biases (d per
pruned projection) are counted in the footprint.

Keeps its own block loop: the fluctuation metric scores every dense block before any is cut.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mpt_core.engine.layerwise import decoder_layers, iterate_blocks, module_name, run_block
from mpt_core.engine.modules import forward_hooks
from mpt_core.registry import register
from mpt_core.storage import TensorStorage

SCORED = ("self_attn.o_proj", "mlp.down_proj")


class Fluctuation:
    """Mean and unbiased variance of each input channel of a linear over every token it
    reads, merged batch by batch (Chan et al.'s parallel update), on ``device``: the
    linear's, where its inputs arrive. In float64, which is ours (the reference's running
    estimate is float32): the exact variance of deliberate difference (1)."""

    def __init__(self, columns: int, device: torch.device | str):
        self.count = 0
        self.mean = torch.zeros(columns, dtype=torch.float64, device=device)
        self.m2 = torch.zeros(columns, dtype=torch.float64, device=device)

    def add_batch(self, inp: torch.Tensor) -> None:
        X = inp.reshape(-1, inp.shape[-1]).double()
        n, batch_mean = X.shape[0], X.mean(0)
        batch_m2 = ((X - batch_mean) ** 2).sum(0)
        total = self.count + n
        delta = batch_mean - self.mean
        self.m2 += batch_m2 + delta**2 * self.count * n / total
        self.mean += delta * n / total
        self.count = total

    @property
    def variance(self) -> torch.Tensor:
        return self.m2 / (self.count - 1)


def wifv(fluctuation: Fluctuation, linear: nn.Linear) -> torch.Tensor:
    """Weighted input feature variance: Var(x_j) · ‖W[:, j]‖² per input channel j."""
    return fluctuation.variance * linear.weight.detach().double().pow(2).sum(0)


def standardize(scores: torch.Tensor) -> torch.Tensor:
    """(s − mean) / std over one layer's channels (unbiased std, as torch.std)."""
    return (scores - scores.mean()) / scores.std()


@dataclass
class LayerStats:
    """What FLAP keeps of one dense layer: channel scores and input means of both projections."""

    attention_scores: torch.Tensor  # standardized, one per key/value group
    mlp_scores: torch.Tensor  # standardized, one per intermediate channel
    attention_mean: torch.Tensor  # mean o_proj input per channel
    mlp_mean: torch.Tensor  # mean down_proj input per channel


def group_channels(attention: nn.Module) -> int:
    """o_proj input channels of one key/value group: its query heads times head_dim."""
    return attention.num_key_value_groups * attention.head_dim


@torch.no_grad()
def block_fluctuations(block: nn.Module, inputs) -> dict[str, Fluctuation]:
    """Fluctuation of the inputs of o_proj and down_proj while the block runs on ``inputs``."""
    modules = {name: block.get_submodule(name) for name in SCORED}
    stats = {
        name: Fluctuation(module.in_features, module.weight.device)
        for name, module in modules.items()
    }
    with forward_hooks(modules, lambda name: lambda _m, args, _out: stats[name].add_batch(args[0])):
        run_block(block, inputs)
    return stats


def layer_stats(block: nn.Module, stats: dict[str, Fluctuation]) -> LayerStats:
    attention, mlp = block.self_attn, block.mlp
    attention_metric = standardize(wifv(stats[SCORED[0]], attention.o_proj) ** 2)
    mlp_metric = standardize(wifv(stats[SCORED[1]], mlp.down_proj))
    per_group = attention_metric.reshape(-1, group_channels(attention)).mean(1)
    return LayerStats(per_group, mlp_metric, stats[SCORED[0]].mean, stats[SCORED[1]].mean)


def dense_layer_stats(model: nn.Module, windows: torch.Tensor) -> list[LayerStats]:
    """Every layer's scores, measured on the dense model before anything is pruned."""
    return [
        layer_stats(block, block_fluctuations(block, inputs))
        for _, block, inputs in iterate_blocks(model, windows)
    ]


def unit_parameters(block: nn.Module) -> tuple[int, int]:
    """Parameters of one key/value group (q, k, v rows and o columns) and of one MLP channel."""
    attention = block.self_attn
    d, head_dim = attention.o_proj.out_features, attention.head_dim
    group = 2 * (attention.num_key_value_groups + 1) * head_dim * d
    return group, 3 * block.mlp.down_proj.out_features


def keep_closest_to(scores: torch.Tensor, weights: torch.Tensor, ratio: float) -> torch.Tensor:
    """Keep the best-scored units whose summed weight comes closest to (1 − ratio) of all."""
    order = scores.argsort(descending=True, stable=True)
    cumulative = torch.cat([weights.new_zeros(1), weights[order].cumsum(0)])
    target = (1 - ratio) * cumulative[-1]
    kept = int((cumulative - target).abs().argmin())
    keep = torch.zeros_like(scores, dtype=torch.bool)
    keep[order[:kept]] = True
    return keep


def adaptive_masks(
    model: nn.Module, stats: list[LayerStats], ratio: float
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """AL-AM: the heads and channels of all layers ranked together; per layer, (groups, channels)
    kept."""
    scores, weights = [], []
    for block, layer in zip(decoder_layers(model), stats):
        group, channel = unit_parameters(block)
        scores += [layer.attention_scores, layer.mlp_scores]
        weights += [
            torch.full_like(layer.attention_scores, group),
            torch.full_like(layer.mlp_scores, channel),
        ]
    keep = keep_closest_to(torch.cat(scores), torch.cat(weights), ratio)
    masks = keep.split([len(s) for s in scores])
    return list(zip(masks[0::2], masks[1::2]))


def _select(linear: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None):
    """Keep the given output rows / input columns of a linear (and its bias rows)."""
    weight = linear.weight.detach()
    if rows is not None:
        weight = weight[rows.to(weight.device)]
        if linear.bias is not None:
            linear.bias = nn.Parameter(linear.bias.detach()[rows.to(weight.device)].clone())
    if cols is not None:
        weight = weight[:, cols.to(weight.device)]
    linear.weight = nn.Parameter(weight.clone())
    linear.out_features, linear.in_features = weight.shape


def compensate(linear: nn.Linear, keep: torch.Tensor, mean: torch.Tensor) -> None:
    """Remove the linear's unkept input columns; their mean contribution W[:, ~keep]·x̄ becomes
    its bias."""
    weight = linear.weight.detach()
    pruned = (~keep).to(weight.device)
    bias = weight.double()[:, pruned] @ mean.to(weight.device)[pruned]
    if linear.bias is not None:
        bias += linear.bias.detach().double()
    _select(linear, cols=keep)
    linear.bias = nn.Parameter(bias.to(weight.dtype))


class EmptyAttention(nn.Module):
    """An attention module whose heads were all pruned: it outputs the o_proj bias (FLAP's
    compensation). It still appends empty keys/values to a cache, so that the cache length
    the model reads from any layer stays right while generating."""

    def __init__(self, attention: nn.Module):
        super().__init__()
        self.layer_idx, self.head_dim = attention.layer_idx, attention.head_dim
        self.o_proj = attention.o_proj

    def forward(self, hidden_states: torch.Tensor, cache=None, **kwargs):
        if cache is not None:
            batch, length = hidden_states.shape[:2]
            empty = hidden_states.new_zeros(batch, 0, length, self.head_dim)
            cache.update(empty, empty, self.layer_idx)
        return self.o_proj(hidden_states[..., :0]), None


def prune_attention(block: nn.Module, keep_groups: torch.Tensor, mean: torch.Tensor) -> None:
    attention = block.self_attn
    channels = keep_groups.repeat_interleave(group_channels(attention))
    kv_rows = keep_groups.repeat_interleave(attention.head_dim)
    compensate(attention.o_proj, channels, mean)
    _select(attention.q_proj, rows=channels)
    _select(attention.k_proj, rows=kv_rows)
    _select(attention.v_proj, rows=kv_rows)
    if not keep_groups.any():
        block.self_attn = EmptyAttention(attention)


def prune_mlp(block: nn.Module, keep: torch.Tensor, mean: torch.Tensor) -> None:
    mlp = block.mlp
    compensate(mlp.down_proj, keep, mean)
    _select(mlp.gate_proj, rows=keep)
    _select(mlp.up_proj, rows=keep)
    mlp.intermediate_size = int(keep.sum())


def record_shapes(model: nn.Module, masks: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Per-layer widths in the config: a FLAP model is no longer one LlamaConfig shape."""
    config, group = (
        model.config,
        model.config.num_attention_heads // model.config.num_key_value_heads,
    )
    config.num_key_value_heads_per_layer = [int(groups.sum()) for groups, _ in masks]
    config.num_attention_heads_per_layer = [group * n for n in config.num_key_value_heads_per_layer]
    config.intermediate_size_per_layer = [int(channels.sum()) for _, channels in masks]
    config.output_projection_bias = True


@register("flap", family="structured", levels={"ratio"}, needs_calibration=True)
def flap(model, stage, settings, calibration) -> dict[str, TensorStorage]:
    stats = dense_layer_stats(model, calibration.windows(settings))
    masks = adaptive_masks(model, stats, stage.ratio)
    for block, layer, (keep_groups, keep_channels) in zip(decoder_layers(model), stats, masks):
        prune_attention(block, keep_groups, layer.attention_mean)
        prune_mlp(block, keep_channels, layer.mlp_mean)
    record_shapes(model, masks)
    return {
        module_name(index, name): TensorStorage()
        for index, block in enumerate(decoder_layers(model))
        for name, _ in block.named_parameters()
        if "norm" not in name
    }
