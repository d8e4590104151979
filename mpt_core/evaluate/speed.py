"""Throughput of a (compressed) model: prefill over fixed windows, decode with a KV cache.

Prefill is what the study's Table 5 "Tokens/s" measures with llama.cpp (prompt
processing): forward passes over fixed windows, tokens per second. Decode is
generation with a KV cache: one token per step, each step attending to the
cache. Both functions synchronise CUDA before they return, so that a timer
around them (pytest-benchmark in ``benchmarks/test_speed_throughput.py``) times the
kernels and not their launch.

What is timed is what runs. Most compressed models in mpt run the same dense
kernels as the uncompressed model: quantization is simulated (weights written
back dequantized) and pruning leaves zeros in dense tensors, so their speed is
the dense speed. Real kernels exist here for:
- NF4/FP4: bitsandbytes ``Linear4bit`` (``to_linear4bit``), on CPU and CUDA;
- 2:4 sparsity on CUDA in fp16/bf16: torch's semi-structured sparse matmul
  (``to_semi_structured``);
- structured pruning and low-rank factorisation change the architecture itself
  (fewer or narrower layers, two thin GEMMs per factorised layer): their dense
  kernels do less work.
``kernel_kind`` names which of these a model runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mpt_core.engine.layerwise import decoder_layers, linear_layers
from mpt_core.engine.modules import replace_module
from mpt_core.registry import family_of
from mpt_core.spec import Spec

SIMULATED = {
    "quant": "dense GEMM on dequantized weights (simulated quantization: no speed-up)",
    "unstructured": "dense GEMM on masked weights (zeros stored densely: no sparse kernel)",
    "semi": "dense GEMM on N:M-masked weights (no sparse kernel on this device)",
    "structured": "dense GEMM on a smaller model (fewer or narrower layers)",
    "lowrank": "two thin dense GEMMs per factorised layer (LowRankLinear)",
}

# the low-rank methods' two-factor layer (mpt_core.lowrank.factorized), named, not imported:
# evaluation imports no method
FACTORIZED_CLASS = "LowRankLinear"
# quantized linears whose forward is not one dense GEMM, by class name ({where}: device, dtype)
MODULE_KERNELS = {
    "Linear4bit": "bitsandbytes Linear4bit ({where}; 4-bit weights dequantized per GEMM)",
    "W8A8Linear": "dense GEMM after per-token fake quantization of the activations "
    "(simulated W8A8: the quantization is extra work, no int8 GEMM) ({where})",
    "Int8Linear": "LLM.int8() simulated: outlier columns found per call, a dense GEMM on "
    "int8-rounded inliers plus a 16-bit GEMM on the outlier columns ({where})",
}


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA kernels; a no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def prefill(model: nn.Module, windows: torch.Tensor, batch_size: int = 1) -> torch.Tensor:
    """Forward passes over every window (no cache kept); the last-position logits."""
    last = []
    for start in range(0, windows.shape[0], batch_size):
        batch = windows[start : start + batch_size]
        last.append(model(batch, use_cache=False).logits[:, -1])
    synchronize(windows.device)
    return torch.cat(last)


@dataclass
class DecodeState:
    """A prompt already run through the model: its KV cache and the first new token."""

    cache: object
    next_token: torch.Tensor  # (batch, 1)


@torch.no_grad()
def start_decode(model: nn.Module, prompt: torch.Tensor) -> DecodeState:
    """Prefill ``prompt`` keeping its KV cache; greedy first token."""
    out = model(prompt, use_cache=True)
    synchronize(prompt.device)
    return DecodeState(out.cache, out.logits[:, -1:].argmax(-1))


@torch.no_grad()
def decode(model: nn.Module, state: DecodeState, steps: int) -> torch.Tensor:
    """``steps`` greedy tokens, one forward of one token each against the KV cache (which
    grows in place: a state decodes once). Returns the generated ids (batch, steps)."""
    token, generated = state.next_token, []
    for _ in range(steps):
        generated.append(token)
        out = model(token, cache=state.cache, use_cache=True)
        token = out.logits[:, -1:].argmax(-1)
    synchronize(token.device)
    return torch.cat(generated, dim=1)


def to_linear4bit(model: nn.Module, quant_type: str = "nf4") -> int:
    """Replace every decoder Linear by bitsandbytes' ``Linear4bit`` holding its weight in
    4-bit storage (blocks of 64, as mpt's nf4/fp4). Returns how many were replaced."""
    import bitsandbytes as bnb

    replaced = 0
    for block in decoder_layers(model):
        for name, linear in linear_layers(block).items():
            quantized = bnb.nn.Linear4bit(
                linear.in_features,
                linear.out_features,
                bias=linear.bias is not None,
                compute_dtype=linear.weight.dtype,
                quant_type=quant_type,
                device="meta",
            )
            quantized.weight = bnb.nn.Params4bit(
                linear.weight.data.detach().cpu(), requires_grad=False, quant_type=quant_type
            )
            if linear.bias is not None:
                quantized.bias = nn.Parameter(linear.bias.data.detach().cpu(), requires_grad=False)
            replace_module(block, name, quantized.to(linear.weight.device))  # .to quantizes
            replaced += 1
    return replaced


def to_semi_structured(model: nn.Module) -> int:
    """Store every 2:4-sparse decoder Linear weight in torch's semi-structured layout, so
    its matmul runs the sparse tensor-core kernel (CUDA, fp16/bf16 only)."""
    from torch.sparse import to_sparse_semi_structured

    replaced = 0
    for block in decoder_layers(model):
        for linear in linear_layers(block).values():
            linear.weight = nn.Parameter(
                to_sparse_semi_structured(linear.weight.detach()), requires_grad=False
            )
            replaced += 1
    return replaced


def real_kernel(spec: Spec, model: nn.Module) -> str | None:
    """The real kernel ``spec`` can run on this model's device and dtype, if any."""
    if spec.methods in (("nf4",), ("fp4",)):
        return "linear4bit"
    device, dtype = device_of(model), next(model.parameters()).dtype
    two_four = len(spec.stages) == 1 and (spec.stages[0].n, spec.stages[0].m) == (2, 4)
    if two_four and device.type == "cuda" and dtype in (torch.float16, torch.bfloat16):
        return "semi_structured"
    return None


def use_real_kernel(spec: Spec, model: nn.Module) -> str | None:
    """Switch a compressed model to the real kernel of its format, where one exists here;
    returns which (None: it keeps running dense kernels)."""
    kind = real_kernel(spec, model)
    if kind == "linear4bit":
        to_linear4bit(model, spec.methods[0])
    elif kind == "semi_structured":
        to_semi_structured(model)
    return kind


def kernel_kind(spec: Spec, model: nn.Module) -> str:
    """In words: what kernels this (compressed) model runs on its device."""
    device, dtype = device_of(model), str(next(model.parameters()).dtype).removeprefix("torch.")
    where = f"{device.type}, {dtype}"
    if any(
        getattr(module, "weight", None).__class__.__name__.startswith("SparseSemiStructured")
        for module in model.modules()
    ):
        return f"torch semi-structured 2:4 sparse GEMM ({where})"
    classes = {module.__class__.__name__ for module in model.modules()}
    for module_class, words in MODULE_KERNELS.items():
        if module_class in classes:
            return words.format(where=where)
    if spec.is_dense:
        return f"dense GEMM ({where})"
    families = {family_of(stage) for stage in spec.stages}
    if FACTORIZED_CLASS in classes:
        families.add("lowrank")
    texts = [SIMULATED[family] for family in sorted(families) if family in SIMULATED]
    return "; ".join(texts) + f" ({where})"
