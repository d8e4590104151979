"""What a compressed model really costs to store, counted tensor by tensor.

Storage layout (documented in the README and tested):
- every tensor not touched by a method: fp16, 16 bits per element; tied
  tensors (embedding and LM head) are stored once;
- quantized values: ``bits`` per stored value, plus per group an fp16 scale
  (16 bits) and, for asymmetric schemes, an fp16 zero point (16 bits);
- sparsity: the zeros of a tensor are counted from the tensor itself, never
  taken from the spec. A tensor a pruning method made sparse is stored as the
  cheaper of dense and (non-zero values + a 1-bit-per-element bitmask); an N:M
  tensor as its kept values plus ceil(log2(M)) index bits per kept value (the
  2:4 sparse tensor-core layout). Zeros that only rounding produced (a 2-bit
  grid maps many small weights to 0) do not make a quantized tensor sparse:
  its integers are stored densely, as every quantized format does. In a
  pipeline, a later quantization stage keeps an earlier stage's sparse layout
  (quantized non-zeros + bitmask, or N:M index) unless its format stores every
  element (GGUF: llama.cpp writes pruned zeros densely).

The reference is the model in fp16: ``fp16_bytes``; ``relative_size`` is
``bytes / fp16_bytes``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

FP16_BITS = 16


@dataclass(frozen=True)
class TensorStorage:
    """How a method stores one weight tensor."""

    value_bits: int = FP16_BITS
    group_size: int | None = None  # elements per scale group; None: no scales
    scale_bits: int = 0  # per group
    zero_bits: int = 0  # per group
    nm: tuple[int, int] | None = None  # (n pruned, m) for N:M sparse storage
    extra_bits: int = 0  # anything else the method stores for the tensor (outliers, ...)
    sparse: bool = False  # a pruning stage removed weights: store non-zeros + bitmask
    # A file format that stores every element (GGUF): zeros an earlier pruning stage left
    # are stored like any other value, so that stage's sparse layout does not carry over.
    stores_zeros: bool = False


@dataclass(frozen=True)
class TensorCost:
    name: str
    numel: int
    nnz: int
    bits: int
    layout: str

    @property
    def bytes(self) -> float:
        return self.bits / 8


@dataclass(frozen=True)
class Footprint:
    tensors: tuple[TensorCost, ...] = field(repr=False)
    bytes: float
    fp16_bytes: float
    compressed_numel: int
    compressed_bits: int
    sparsity: float  # zeros / elements over the tensors a method compressed

    @property
    def relative_size(self) -> float:
        return self.bytes / self.fp16_bytes

    @property
    def bits_per_weight(self) -> float:
        """Effective bits per weight over the tensors a method compressed."""
        return self.compressed_bits / self.compressed_numel if self.compressed_numel else 16.0

    def summary(self) -> dict:
        return {
            "bytes": self.bytes,
            "fp16_bytes": self.fp16_bytes,
            "relative_size": self.relative_size,
            "bits_per_weight": self.bits_per_weight,
            "sparsity": self.sparsity,
            "compressed_numel": self.compressed_numel,
        }


def tensor_cost(name: str, tensor: torch.Tensor, storage: TensorStorage | None) -> TensorCost:
    numel = tensor.numel()
    if storage is None:
        return TensorCost(name, numel, numel, numel * FP16_BITS, "fp16")
    nnz = int(torch.count_nonzero(tensor))
    scales = _scale_bits(numel, tensor, storage) + storage.extra_bits
    dense = numel * storage.value_bits
    if storage.nm is not None:
        index_bits = nnz * math.ceil(math.log2(storage.nm[1]))
        return TensorCost(name, numel, nnz, nnz * storage.value_bits + index_bits + scales, "nm")
    bitmask = nnz * storage.value_bits + numel
    if storage.sparse and bitmask < dense:
        return TensorCost(name, numel, nnz, bitmask + scales, "bitmask")
    return TensorCost(name, numel, nnz, dense + scales, "dense")


def _scale_bits(numel: int, tensor: torch.Tensor, storage: TensorStorage) -> int:
    if storage.group_size is None:
        return 0
    groups = numel // storage.group_size
    return groups * (storage.scale_bits + storage.zero_bits)


def dense_numel(model: nn.Module) -> int:
    return sum(param.numel() for _, param in language_model_parameters(model))


def measure(
    model: nn.Module, storage: dict[str, TensorStorage], reference_numel: int | None = None
) -> Footprint:
    """Footprint of ``model`` where ``storage`` maps parameter names a method compressed.

    ``reference_numel`` is the element count of the original model, so that a
    structurally pruned model is compared with what it was, not with itself.
    """
    costs = [
        tensor_cost(name, param.detach(), storage.get(name))
        for name, param in language_model_parameters(model)
    ]
    compressed = [cost for cost in costs if cost.name in storage]
    numel = sum(cost.numel for cost in compressed)
    zeros = sum(cost.numel - cost.nnz for cost in compressed)
    total_numel = reference_numel or sum(cost.numel for cost in costs)
    return Footprint(
        tensors=tuple(costs),
        bytes=sum(cost.bits for cost in costs) / 8,
        fp16_bytes=total_numel * FP16_BITS / 8,
        compressed_numel=numel,
        compressed_bits=sum(cost.bits for cost in compressed),
        sparsity=zeros / numel if numel else 0.0,
    )


# What a text-only evaluation never runs: a multimodal checkpoint's vision encoder and
# projector (Gemma-3 4B/12B/27B). They are not the language model measured, and the study's
# sizes leave them out (Table 6: Gemma-3-4B-IT FP16 7.77 GB, its ~3.88e9 text parameters).
NOT_TEXT_MODULES = frozenset({"vision_tower", "multi_modal_projector"})


def language_model_parameters(model: nn.Module):
    """Named parameters of the language model, tied tensors (same storage) listed once under
    their first name (a tied LM head under the embedding's): what the footprint counts and
    what llama.cpp's converter writes (``quant.gguf_convert``)."""
    seen: set[int] = set()
    for name, param in model.named_parameters(remove_duplicate=False):
        key = param.data_ptr()
        if key in seen or not NOT_TEXT_MODULES.isdisjoint(name.split(".")):
            continue
        seen.add(key)
        yield name, param
