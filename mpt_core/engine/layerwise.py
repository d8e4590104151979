"""The layerwise engine: the GPTQ/SparseGPT pattern, written once.

1. Run the calibration windows through the embeddings and capture what decoder
   layer 0 receives (hidden states plus the keyword arguments: rotary
   embeddings, mask, positions).
2. For each decoder layer: attach the method's statistics to each of its
   linear layers (a forward hook feeds ``add_batch(inp, out)``), run the layer
   over the calibration inputs, let the method compress each linear from its
   statistics, then run the compressed layer again so the next layer sees the
   compressed model's activations.

Peak memory is one layer's activations for the calibration set. An offloaded model
(``engine.offload``: weights in host memory) has one block at a time on the compute device. A method
supplies only ``make_stats(site, linear)`` and ``compress(site, linear, stats)``; a
``LinearSite`` carries the block index and the linear's name inside the block and in the
model. ``propagate="dense"`` feeds each block the dense model's activations instead.

This module is the one place that knows the blocks' parameter names
(``model.layers.{index}``): methods name tensors through ``LinearSite`` and ``weight_name``.
``text_decoder`` finds the decoder (embeddings, blocks, final norm) in a text-only model
and in a multimodal one that nests it (Gemma-3 4B/12B/27B: ``model.language_model``); the
sites the engine makes carry that model's block prefix (``blocks_prefix``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from mpt_core.engine.offload import on_compute
from mpt_core.models import compute_device
from mpt_core.storage import TensorStorage

CALIBRATION_BATCH = 8
BLOCKS = "model.layers"  # the parameter-name prefix of the decoder blocks
Propagation = Literal["compressed", "dense"]


class _Captured(Exception):
    """Raised by the layer-0 hook to stop the forward pass once inputs are caught."""


@dataclass
class LayerInputs:
    hidden: torch.Tensor  # (nsamples, seqlen, hidden)
    kwargs: dict


def text_decoder(model: nn.Module) -> nn.Module:
    """The module that holds the embeddings, the blocks, the final norm and the rotary
    tables: ``model.model`` (LLaMA-family layout), or ``model.model.language_model`` in a
    multimodal model that keeps a vision encoder beside it
    (``Gemma3ForConditionalGeneration``)."""
    inner = model.model
    return getattr(inner, "language_model", inner)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's list of transformer blocks."""
    return text_decoder(model).layers


def blocks_prefix(model: nn.Module) -> str:
    """The parameter-name prefix of the blocks: ``model.layers`` (``BLOCKS``), or
    ``model.language_model.layers`` in a multimodal Gemma-3."""
    layers = decoder_layers(model)
    return next(name for name, module in model.named_modules() if module is layers)


def linear_layers(block: nn.Module) -> dict[str, nn.Linear]:
    return {name: module for name, module in block.named_modules() if isinstance(module, nn.Linear)}


@dataclass(frozen=True)
class LinearSite:
    """Where a linear sits: its block's index and its name inside the block."""

    index: int
    name: str  # inside the block, e.g. "self_attn.q_proj"
    blocks: str = BLOCKS  # the model's block prefix (``blocks_prefix``)

    @property
    def path(self) -> str:
        """Its module name in the model, e.g. ``model.layers.3.self_attn.q_proj``."""
        return module_name(self.index, self.name, self.blocks)

    @property
    def weight(self) -> str:
        """Its weight's parameter name: the key of a method's storage."""
        return f"{self.path}.weight"


def module_name(index: int, name: str = "", blocks: str = BLOCKS) -> str:
    """The model-level name of block ``index`` (or of ``name`` inside it)."""
    return f"{blocks}.{index}.{name}" if name else f"{blocks}.{index}"


def weight_name(index: int, name: str) -> str:
    """The parameter name of the weight of ``name`` inside block ``index``."""
    return f"{module_name(index, name)}.weight"


def block_linears(model: nn.Module) -> Iterator[tuple[LinearSite, nn.Linear]]:
    """Every linear of every decoder block with its site: the loop of methods that need
    no calibration data (an offloaded model's block on the compute device meanwhile)."""
    blocks = blocks_prefix(model)
    for index, block in enumerate(decoder_layers(model)):
        with on_compute(model, block):
            for name, linear in linear_layers(block).items():
                yield LinearSite(index, name, blocks), linear


def stem_modules(model: nn.Module) -> list[nn.Module]:
    """What runs outside the blocks: embeddings, rotary tables, final norm, the head.

    A multimodal model's vision encoder and projector are not part of it: mpt feeds text
    only (``input_ids``), so they never run, and an offloaded model leaves them in host
    memory."""
    inner = text_decoder(model)
    return [inner.embed_tokens, getattr(inner, "rotary_emb", None), inner.norm, model.lm_head]


def block_linear_names(model: nn.Module) -> list[str]:
    """Parameter names of every linear weight inside decoder blocks: what methods compress."""
    return [site.weight for site, _ in block_linears(model)]


@torch.no_grad()
def capture_layer0_inputs(model: nn.Module, windows: torch.Tensor) -> LayerInputs:
    """Hidden states and keyword arguments decoder layer 0 receives for ``windows``."""
    first = decoder_layers(model)[0]
    device = compute_device(model)
    batches: list[torch.Tensor] = []
    kwargs: dict = {}

    def catch(_module, args, layer_kwargs):
        batches.append(args[0] if args else layer_kwargs["hidden_states"])
        kwargs.update({k: v for k, v in layer_kwargs.items() if k != "hidden_states"})
        raise _Captured

    handle = first.register_forward_pre_hook(catch, with_kwargs=True)
    try:
        with on_compute(model, *stem_modules(model)):
            for batch in windows.split(CALIBRATION_BATCH):
                with contextlib.suppress(_Captured):
                    model(batch.to(device), use_cache=False)
    finally:
        handle.remove()
    kwargs["use_cache"] = False
    return LayerInputs(torch.cat(batches), kwargs)


@torch.no_grad()
def run_block(block: nn.Module, inputs: LayerInputs) -> torch.Tensor:
    """The block's outputs for every calibration sample, batch by batch."""
    outputs = []
    for hidden in inputs.hidden.split(CALIBRATION_BATCH):
        out = block(hidden, **_fit_batch(inputs.kwargs, hidden.shape[0]))
        outputs.append(out[0] if isinstance(out, tuple) else out)
    return torch.cat(outputs)


def _fit_batch(kwargs: dict, size: int) -> dict:
    """Slice captured per-batch tensors (mask, rotary tables) to a batch of ``size``."""
    return {key: _fit_tensor(value, size) for key, value in kwargs.items()}


def _fit_tensor(value, size: int):
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] > 1:
        return value[:size] if value.shape[0] >= size else value[:1].expand(size, *value.shape[1:])
    if isinstance(value, tuple):
        return tuple(_fit_tensor(item, size) for item in value)
    return value


def iterate_blocks(
    model: nn.Module, windows: torch.Tensor, propagate: Propagation = "compressed"
) -> Iterator[tuple[int, nn.Module, LayerInputs]]:
    """Yield (index, block, its calibration inputs). With ``propagate="compressed"`` the
    outputs of the block as it is after the yield (compressed) feed the next block; with
    ``"dense"``, its outputs before the yield (the dense model's activations)."""
    if propagate not in ("compressed", "dense"):
        raise ValueError(f"propagate must be 'compressed' or 'dense', not {propagate!r}")
    inputs = capture_layer0_inputs(model, windows)
    for index, block in enumerate(decoder_layers(model)):
        with on_compute(model, block):
            dense_outputs = run_block(block, inputs) if propagate == "dense" else None
            yield index, block, inputs
            outputs = run_block(block, inputs) if dense_outputs is None else dense_outputs
        inputs = LayerInputs(outputs, inputs.kwargs)


@torch.no_grad()
def collect_stats(
    block: nn.Module, inputs: LayerInputs, make_stats: Callable, index: int, blocks: str = BLOCKS
) -> dict[str, object]:
    """Run block ``index`` once with a statistics object, ``make_stats(site, linear)``, fed
    by a hook on each linear; keyed by the linear's name inside the block. ``blocks``: the
    model's block prefix, which the sites carry."""
    stats = {
        name: make_stats(LinearSite(index, name, blocks), linear)
        for name, linear in linear_layers(block).items()
    }
    handles = [
        linear.register_forward_hook(_feeder(stats[name]))
        for name, linear in linear_layers(block).items()
    ]
    try:
        run_block(block, inputs)
    finally:
        for handle in handles:
            handle.remove()
    return stats


def _feeder(stats) -> Callable:
    def hook(_module, args, output):
        stats.add_batch(args[0].detach(), output.detach())

    return hook


def compress_layerwise(
    model: nn.Module,
    windows: torch.Tensor,
    make_stats: Callable[[LinearSite, nn.Linear], object],
    compress: Callable[[LinearSite, nn.Linear, object], TensorStorage],
    propagate: Propagation = "compressed",
) -> dict[str, TensorStorage]:
    """Compress every linear of every decoder block from calibration statistics."""
    storage: dict[str, TensorStorage] = {}
    blocks = blocks_prefix(model)
    for index, block, inputs in iterate_blocks(model, windows, propagate):
        stats = collect_stats(block, inputs, make_stats, index, blocks)
        for name, linear in linear_layers(block).items():
            site = LinearSite(index, name, blocks)
            storage[site.weight] = compress(site, linear, stats[name])
            stats[name] = None
    return storage
