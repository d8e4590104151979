"""The layerwise engine: the GPTQ/SparseGPT pattern, written once.

1. Run the calibration windows through the embeddings and capture what decoder
   layer 0 receives (hidden states plus the keyword arguments: rotary
   embeddings, mask, positions).
2. For each decoder layer: attach the method's statistics to each of its
   linear layers (a forward hook feeds ``add_batch(inp, out)``), run the layer
   over the calibration inputs, let the method compress each linear from its
   statistics, then run the compressed layer again so the next layer sees the
   compressed model's activations.

Peak memory is one layer's activations for the calibration set. A method
supplies only ``make_stats(name, linear)`` and ``compress(name, linear, stats)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from mpt_core.storage import TensorStorage

CALIBRATION_BATCH = 8


class _Captured(Exception):
    """Raised by the layer-0 hook to stop the forward pass once inputs are caught."""


@dataclass
class LayerInputs:
    hidden: torch.Tensor  # (nsamples, seqlen, hidden)
    kwargs: dict


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's list of transformer blocks (LLaMA-family layout)."""
    return model.model.layers


def linear_layers(block: nn.Module) -> dict[str, nn.Linear]:
    return {name: module for name, module in block.named_modules() if isinstance(module, nn.Linear)}


def block_linear_names(model: nn.Module) -> list[str]:
    """Parameter names of every linear weight inside decoder blocks: what methods compress."""
    names = []
    for index, block in enumerate(decoder_layers(model)):
        names += [f"model.layers.{index}.{name}.weight" for name in linear_layers(block)]
    return names


@torch.no_grad()
def capture_layer0_inputs(model: nn.Module, windows: torch.Tensor) -> LayerInputs:
    """Hidden states and keyword arguments decoder layer 0 receives for ``windows``."""
    first = decoder_layers(model)[0]
    device = next(model.parameters()).device
    batches: list[torch.Tensor] = []
    kwargs: dict = {}

    def catch(_module, args, layer_kwargs):
        batches.append(args[0] if args else layer_kwargs["hidden_states"])
        kwargs.update({k: v for k, v in layer_kwargs.items() if k != "hidden_states"})
        raise _Captured

    handle = first.register_forward_pre_hook(catch, with_kwargs=True)
    try:
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
    model: nn.Module, windows: torch.Tensor
) -> Iterator[tuple[int, nn.Module, LayerInputs]]:
    """Yield (index, block, its calibration inputs); after each yield the outputs of the
    (possibly compressed) block become the next block's inputs."""
    inputs = capture_layer0_inputs(model, windows)
    for index, block in enumerate(decoder_layers(model)):
        yield index, block, inputs
        inputs = LayerInputs(run_block(block, inputs), inputs.kwargs)


@torch.no_grad()
def collect_stats(block: nn.Module, inputs: LayerInputs, make_stats: Callable) -> dict[str, object]:
    """Run the block once with a statistics object fed by a hook on each linear."""
    stats = {name: make_stats(name, linear) for name, linear in linear_layers(block).items()}
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
    make_stats: Callable[[str, nn.Linear], object],
    compress: Callable[[str, nn.Linear, object], TensorStorage],
) -> dict[str, TensorStorage]:
    """Compress every linear of every decoder block from calibration statistics."""
    storage: dict[str, TensorStorage] = {}
    for index, block, inputs in iterate_blocks(model, windows):
        stats = collect_stats(block, inputs, make_stats)
        for name, linear in linear_layers(block).items():
            storage[f"model.layers.{index}.{name}.weight"] = compress(name, linear, stats[name])
            stats[name] = None
    return storage
