"""The exact original weights and architecture of a model, kept in host memory.

A model on a GPU is restored before every point, and the study's models fill most of one
GPU: a second copy there (or a third, for a pipeline's first stage) would not fit. So the
snapshot always lives in host memory (``HOST``), never on the model's device, and it is
one copy: the module tree with host tensors, whose state dict is the weights restored in
place.
"""

from __future__ import annotations

import copy
import itertools

import torch
from torch import nn

from mpt_core.errors import ModelError

HOST = torch.device("cpu")  # where snapshots live, whatever device the model computes on


class Snapshot:
    """The original weights and architecture of a model, restorable in place.

    Restore copies weights back into the same tensors when the architecture is
    unchanged (cheap, keeps object identity); after a structural change (sliced
    matrices, removed blocks, wrapped modules) it rebuilds the module tree from the host
    copy and moves it to the model's device. Either way the model object the caller holds
    is the one restored. A model spread over GPUs (``device_map``) keeps its weights only.
    """

    def __init__(self, model: nn.Module):
        self._structure = _structure(model)
        self._device = next(model.parameters()).device
        if getattr(model, "hf_device_map", None):
            self._tree = None
            self._weights = {name: _to_host(t) for name, t in model.state_dict().items()}
        else:
            self._tree = host_copy(model)
            self._weights = self._tree.state_dict()

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor the snapshot holds (what a memory test inspects)."""
        return list(self._weights.values())

    def restore(self, model: nn.Module) -> None:
        if _structure(model) == self._structure and not _has_hooks(model):
            with torch.no_grad():
                for name, tensor in model.state_dict().items():
                    tensor.copy_(self._weights[name])
        elif self._tree is None:
            raise ModelError(
                "a model loaded with device_map='auto' keeps only its weights to restore: "
                "structural methods (and hooks left behind) need it on one device"
            )
        else:
            rebuilt = copy.deepcopy(self._tree).to(self._device)
            model.__dict__.update(rebuilt.__dict__)


def host_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose parameters and buffers are host tensors, made without
    a device copy first: each tensor is copied straight to the host and the deep copy is
    told to use it (tied weights stay tied: one tensor, one copy)."""
    memo: dict[int, object] = {}
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        if id(tensor) not in memo:
            memo[id(tensor)] = _to_host(tensor)
    return copy.deepcopy(model, memo)


def _to_host(tensor: torch.Tensor) -> torch.Tensor:
    data = tensor.detach().to(HOST, copy=True)
    if isinstance(tensor, nn.Parameter):
        return nn.Parameter(data, requires_grad=tensor.requires_grad)
    return data


def _structure(model: nn.Module) -> list[tuple]:
    modules = [(name, type(module)) for name, module in model.named_modules()]
    tensors = [(name, tuple(t.shape), t.dtype) for name, t in model.state_dict().items()]
    return modules + tensors + [model.config.to_json_string()]


def _has_hooks(model: nn.Module) -> bool:
    return any(module._forward_hooks or module._forward_pre_hooks for module in model.modules())
