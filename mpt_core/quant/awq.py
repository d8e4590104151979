"""AWQ: activation-aware weight quantization (Lin, Tang, Tang, Yang, Chen, Wang, Xiao,
Dang, Gan, Han; MLSys 2024, arXiv:2306.00978).

The weights that meet large activations matter most. Scaling an input channel of W
up by s (and its activation down by s) shrinks that weight's relative rounding
error, so per block AWQ searches s = s_x^α / sqrt(max·min), s_x the mean |x| of
each input channel, over a grid of 20 values α ∈ {0, 0.05, …, 0.95}, keeping the α
whose quantized module output is closest (MSE) to the float output. The scale is
folded into the op before (RMSNorm for q/k/v and gate/up; up_proj for down_proj;
v_proj for o_proj only when their shapes match, i.e. without grouped-query
attention), so the float model is unchanged. Then each linear except q/k (whose
product is hard to clip precisely) gets a clipping search: per group, the max
|w| shrunk by up to 50% in 20 steps, keeping the clip with the least output error on
512 tokens. Finally every weight is quantized with a zero point per ``group``.

This is mit-han-lab/llm-awq ``run_awq`` (``auto_scale_block``, ``auto_clip_block``)
and ``pseudo_quantize_tensor``, whose grid differs from GPTQ's: min and max of the
group without forcing 0 into the range, the zero point clamped to the grid.
Calibration inputs reach each block through the float model, as theirs do.

Storage: as RTN (``bits`` per weight, fp16 scale and zero per group).
"""

from __future__ import annotations

import torch
from torch import nn

from mpt_core.engine.layerwise import (
    LayerInputs,
    block_linears,
    collect_stats,
    iterate_blocks,
    linear_layers,
    run_block,
)
from mpt_core.quant import backends
from mpt_core.quant.grid import check_groups, rtn_storage
from mpt_core.registry import Option, positive_int, register
from mpt_core.storage import TensorStorage

N_GRID = 20
MAX_SHRINK = 0.5
N_SAMPLE_TOKEN = 512
NOT_CLIPPED = ("q_", "k_")


def pseudo_quantize_tensor(w: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    """llm-awq's asymmetric group quantization, returned dequantized."""
    shape = w.shape
    w = w.reshape(-1, group)
    max_val = w.amax(dim=1, keepdim=True)
    min_val = w.amin(dim=1, keepdim=True)
    max_int = 2**bits - 1
    scales = (max_val - min_val).clamp(min=1e-5) / max_int
    zeros = (-torch.round(min_val / scales)).clamp(0, max_int)
    w = (torch.clamp(torch.round(w / scales) + zeros, 0, max_int) - zeros) * scales
    return w.reshape(shape)


class InputFeatures:
    """Every calibration input of one linear, kept for the scale and clip searches."""

    def __init__(self, _site=None, _linear: nn.Linear | None = None):
        self.batches: list[torch.Tensor] = []

    def add_batch(self, inp: torch.Tensor, _out: torch.Tensor | None = None) -> None:
        self.batches.append(inp)

    def features(self) -> torch.Tensor:
        return torch.cat(self.batches)


def module_output(module: nn.Module, x: torch.Tensor, kwargs: dict) -> torch.Tensor:
    return run_block(module, LayerInputs(x, kwargs))


@torch.no_grad()
def search_module_scale(
    module: nn.Module, linears: list[nn.Linear], x: torch.Tensor, kwargs: dict, bits: int, group
) -> torch.Tensor:
    """The per-input-channel scale s = s_x^α (normalized) whose quantized output of
    ``module`` is nearest the float output, α on a grid of 20."""
    org_out = module_output(module, x, kwargs)
    x_mean = x.abs().reshape(-1, x.shape[-1]).float().mean(0)
    original = [fc.weight.detach().clone() for fc in linears]
    best_error, best_scales = float("inf"), None
    for step in range(N_GRID):
        ratio = step / N_GRID
        scales = x_mean.pow(ratio).clamp(min=1e-4).view(-1)
        scales = scales / (scales.max() * scales.min()).sqrt()
        for fc, weight in zip(linears, original, strict=True):
            scaled = weight * scales.view(1, -1)
            fc.weight.copy_(pseudo_quantize_tensor(scaled, bits, group) / scales.view(1, -1))
        out = module_output(module, x, kwargs)
        loss = (org_out - out).float().pow(2).mean().item()
        if loss < best_error:
            best_error, best_scales = loss, scales
        for fc, weight in zip(linears, original, strict=True):
            fc.weight.copy_(weight)
    return best_scales


@torch.no_grad()
def apply_scale(prev_op: nn.Module, linears: list[nn.Linear], scales: torch.Tensor) -> None:
    """Divide the previous op's output channels by s and multiply the linears' inputs by s."""
    if isinstance(prev_op, nn.Linear):
        prev_op.weight[-scales.numel() :].div_(scales.view(-1, 1))
        if prev_op.bias is not None:
            prev_op.bias.div_(scales)
    else:
        prev_op.weight.div_(scales)
    for fc in linears:
        fc.weight.mul_(scales.view(1, -1))


def scale_groups(block: nn.Module) -> list[tuple[str, tuple[str, ...], str, str]]:
    """(previous op, scaled linears, module whose output is compared, its input) for a LLaMA
    block, as llm-awq's ``auto_scale_block``."""
    groups = [
        (
            "input_layernorm",
            ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
            "self_attn",
            "self_attn.q_proj",
        )
    ]
    attn = block.self_attn
    if attn.v_proj.weight.shape == attn.o_proj.weight.shape:
        groups.append(
            ("self_attn.v_proj", ("self_attn.o_proj",), "self_attn.o_proj", "self_attn.o_proj")
        )
    groups.append(
        ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"), "mlp", "mlp.gate_proj")
    )
    groups.append(("mlp.up_proj", ("mlp.down_proj",), "mlp.down_proj", "mlp.down_proj"))
    return groups


@torch.no_grad()
def auto_scale_block(block: nn.Module, features: dict, kwargs: dict, bits: int, groups) -> None:
    """Search and apply the scales of one block; features of the scaled linears are divided
    by s in place so that the clipping search sees the scaled inputs."""
    attn_kwargs = {key: value for key, value in kwargs.items() if key != "use_cache"}
    for prev_name, names, inspect_name, input_name in scale_groups(block):
        linears = [block.get_submodule(name) for name in names]
        module = block.get_submodule(inspect_name)
        x = features[input_name]
        module_kwargs = attn_kwargs if inspect_name == "self_attn" else {}
        scales = search_module_scale(module, linears, x, module_kwargs, bits, groups[names[0]])
        apply_scale(block.get_submodule(prev_name), linears, scales)
        for name in names:
            features[name] = features[name] / scales.view(1, -1)


@torch.no_grad()
def auto_clip_layer(w: torch.Tensor, x: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    """Per output row and group, the clip max|w|·(1 - i/20), i < 10, with the least error
    of the group's partial products on 512 sampled tokens."""
    x = x.reshape(-1, x.shape[-1])
    x = x.reshape(1, x.shape[0], -1, group)
    x = x[:, 0 :: max(1, x.shape[1] // N_SAMPLE_TOKEN)]
    w = w.reshape(w.shape[0], 1, -1, group)
    org_max_val = w.abs().amax(dim=-1, keepdim=True)
    best_max_val = org_max_val.clone()
    min_errs = torch.full_like(org_max_val, 1e9)
    org_out = group_products(x, w)
    for i_s in range(int(MAX_SHRINK * N_GRID)):
        max_val = org_max_val * (1 - i_s / N_GRID)
        cur_w = torch.clamp(w, -max_val, max_val)
        q_w = pseudo_quantize_tensor(cur_w, bits, group)
        cur_out = group_products(x, q_w)
        err = (cur_out - org_out).pow(2).mean(dim=1).view(min_errs.shape)
        better = err < min_errs
        min_errs[better] = err[better]
        best_max_val[better] = max_val[better]
    return best_max_val.squeeze(1)


def group_products(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Each row's partial product with each token, group by group: llm-awq's
    ``(x * w).sum(-1)`` over (1, tokens, groups, g) x (rows, 1, groups, g), as one batched
    matmul per group instead of a (rows, tokens, groups, g) temporary (125x faster on CPU)."""
    return torch.einsum("tgk,rgk->rtg", x[0], w[:, 0])


@torch.no_grad()
def auto_clip_block(block: nn.Module, features: dict, bits: int, groups) -> None:
    for name, linear in linear_layers(block).items():
        if any(part in name for part in NOT_CLIPPED):
            continue
        weight = linear.weight
        # rows in batches bound the (rows, tokens, groups, group) product's memory
        max_val = torch.cat(
            [
                auto_clip_layer(rows.float(), features[name].float(), bits, groups[name])
                for rows in weight.split(64)
            ]
        )
        shape = weight.shape
        clipped = weight.reshape(*max_val.shape[:2], -1).clamp(-max_val, max_val)
        weight.copy_(clipped.reshape(shape))


def run_awq(model: nn.Module, windows: torch.Tensor, bits: int, groups: dict) -> None:
    """Scale and clip every block; each block's inputs come from the float blocks before it."""
    for index, block, inputs in iterate_blocks(model, windows, propagate="dense"):
        stats = collect_stats(block, inputs, InputFeatures, index)
        features = {name: stat.features() for name, stat in stats.items()}
        auto_scale_block(block, features, inputs.kwargs, bits, groups)
        auto_clip_block(block, features, bits, groups)


@register(
    "awq",
    family="quant",
    levels={"bits"},
    needs_calibration=True,
    options={
        "group": Option(positive_int, None, "input weights per scale group (default: whole row)"),
        "backend": Option(backends.parser("awq"), "mpt", "mpt or llmcompressor"),
    },
)
@torch.no_grad()
def awq(model, stage, settings, calibration) -> dict[str, TensorStorage]:
    groups = check_groups(model, settings["group"])
    if settings["backend"] != "mpt":
        return backends.run("awq", model, stage, settings, calibration)
    run_awq(model, calibration.windows(settings), stage.bits, groups)
    storage = {}
    for site, linear in block_linears(model):
        group = groups[site.name]
        linear.weight.copy_(pseudo_quantize_tensor(linear.weight.float(), stage.bits, group))
        storage[site.weight] = rtn_storage(stage.bits, group, sym=False)
    return storage
