"""SmoothQuant: accurate and efficient post-training quantization for LLMs
(Xiao, Lin, Seznec, Wu, Demouth, Han; ICML 2023, arXiv:2211.10438).

Activations have a few channels with large outliers, weights do not; a per-channel
scale s_j = max|X_j|^α / max|W_j|^(1-α) moves the difficulty from X to W:
X·diag(s)⁻¹ · diag(s)·W is the same product. The division is folded into the
preceding RMSNorm, the multiplication into the linears that read it (q/k/v after
``input_layernorm``, gate/up after ``post_attention_layernorm``), as
mit-han-lab/smoothquant ``smooth_lm`` does for LLaMA; max|X_j| comes from one pass
of the calibration windows through the float model (their ``get_act_scales``).
Then W8A8 as their ``quantize_llama_like``: every linear of the blocks gets
per-output-channel absmax int weights and per-token dynamic absmax int
activations, fake-quantized in the forward pass (``W8A8Linear``); ``smoothquant:B``
uses B bits for both, as their ``n_bits``.

Storage: ``bits`` per weight and one fp16 scale per output channel; the
activation scales are computed on the fly and stored nowhere.

The smoothing pass keeps its own loop over the blocks: it rescales each block's norms
together with the linears reading them, which is no per-linear callback of the engine.
"""

from __future__ import annotations

import torch
from torch import nn

from mpt_core.engine.layerwise import block_linears, decoder_layers
from mpt_core.engine.modules import replace_module
from mpt_core.quant import backends
from mpt_core.quant.activations import input_absmax
from mpt_core.registry import Option, float_in, register
from mpt_core.storage import TensorStorage

SMOOTHED = {
    "input_layernorm": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "post_attention_layernorm": ("mlp.gate_proj", "mlp.up_proj"),
}


def absmax_fake_quant(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric absmax quantization along the last dimension (per token for activations,
    per output channel for weights), returned dequantized."""
    q_max = 2 ** (bits - 1) - 1
    scales = x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-5) / q_max
    return torch.round(x / scales) * scales


class PerTokenQuant(nn.Module):
    """Per-token dynamic absmax fake quantization of a linear's input."""

    def __init__(self, bits: int):
        super().__init__()
        self.bits = bits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return absmax_fake_quant(x, self.bits)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


class W8A8Linear(nn.Linear):
    """A linear whose input is fake-quantized per token on every call (its weight is
    quantized once, when it is made). The activation quantizer is a child module, so
    the module tree shows the change and ``Snapshot`` rebuilds it on restore."""

    @classmethod
    def wrap(cls, linear: nn.Linear, bits: int) -> W8A8Linear:
        new = cls(linear.in_features, linear.out_features, bias=False, device="meta")
        new.weight = linear.weight
        new.bias = linear.bias
        new.act_quant = PerTokenQuant(bits)
        with torch.no_grad():
            new.weight.copy_(absmax_fake_quant(new.weight.float(), bits).to(new.weight.dtype))
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(self.act_quant(x), self.weight, self.bias)


@torch.no_grad()
def smooth_ln_fcs(ln: nn.Module, fcs: list[nn.Linear], act_scales: torch.Tensor, alpha: float):
    """s_j = max|X_j|^α / max|W_j|^(1-α); the norm's weight / s, each linear's columns · s."""
    dtype = fcs[0].weight.dtype
    weight_scales = torch.stack([fc.weight.abs().amax(dim=0) for fc in fcs]).amax(dim=0)
    weight_scales = weight_scales.float().clamp(min=1e-5)
    scales = (act_scales.pow(alpha) / weight_scales.pow(1 - alpha)).clamp(min=1e-5).to(dtype)
    ln.weight.div_(scales)
    for fc in fcs:
        fc.weight.mul_(scales.view(1, -1))


def smooth_block(block: nn.Module, act_scales: dict[str, torch.Tensor], alpha: float) -> None:
    """Migrate activation outliers into the weights of one decoder block (output unchanged)."""
    for norm, linears in SMOOTHED.items():
        fcs = [block.get_submodule(name) for name in linears]
        smooth_ln_fcs(block.get_submodule(norm), fcs, act_scales[linears[0]], alpha)


@register(
    "smoothquant",
    family="quant",
    levels={"bits"},
    needs_calibration=True,
    options={
        "alpha": Option(float_in(0, 1, what="migration strength"), 0.5, "migration strength α"),
        "backend": Option(backends.parser("smoothquant"), "mpt", "mpt or llmcompressor"),
    },
)
def smoothquant(model, stage, settings, calibration) -> dict[str, TensorStorage]:
    if settings["backend"] != "mpt":
        return backends.run("smoothquant", model, stage, settings, calibration)
    act_scales = input_absmax(model, calibration.windows(settings))
    for index, block in enumerate(decoder_layers(model)):
        smooth_block(block, act_scales[index], settings["alpha"])
    storage = {}
    for site, linear in block_linears(model):
        replace_module(model, site.path, W8A8Linear.wrap(linear, stage.bits))
        storage[site.weight] = TensorStorage(
            value_bits=stage.bits, group_size=linear.in_features, scale_bits=16
        )
    return storage
