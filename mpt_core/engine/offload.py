"""Block offload: the model stays in host memory and one decoder block at a time computes on
the device, the scheme of the reference GPTQ/SparseGPT code (``layer.to(dev)`` ... ``.cpu()``)
for models larger than the device.

A model is offloaded by ``models.offload(model, device)`` (``models.load_model`` does it on a
GPU the model does not fit): its weights stay where they are and ``compute_device(model)``
names the device its blocks compute on. The layerwise engine moves
a block there while a method compresses it and back after; ``streamed(model)`` does the same
for a whole forward pass (evaluation), block by block. Without ``offload`` every function
here is a no-op, so the engine's arithmetic is the same either way.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from mpt_core.models import compute_device, host_device, is_offloaded


def to_compute(module: nn.Module, device: torch.device) -> None:
    module.to(device)


def to_host(module: nn.Module, device: torch.device) -> None:
    module.to(device)


@contextmanager
def on_compute(model: nn.Module, *modules: nn.Module | None) -> Iterator[None]:
    """``modules`` of an offloaded model on its compute device inside the block, back in
    host memory after it (a no-op for a model that is not offloaded)."""
    present = [module for module in modules if module is not None]
    if not is_offloaded(model):
        yield
        return
    host, device = host_device(model), compute_device(model)
    for module in present:
        to_compute(module, device)
    try:
        yield
    finally:
        for module in present:
            to_host(module, host)


@contextmanager
def streamed(model: nn.Module, blocks: nn.ModuleList, stem: list[nn.Module]) -> Iterator[None]:
    """A whole forward pass of an offloaded model: ``stem`` (embeddings, final norm, head)
    on the compute device throughout, each block moved there just before it runs and back
    just after."""
    host, device = host_device(model), compute_device(model)

    def arrive(block, _args):
        to_compute(block, device)

    def leave(block, _args, _output):
        to_host(block, host)

    handles = [b.register_forward_pre_hook(arrive) for b in blocks]
    handles += [b.register_forward_hook(leave) for b in blocks]
    try:
        with on_compute(model, *stem):
            yield
    finally:
        for handle in handles:
            handle.remove()
