"""Depth pruning by angular distance: remove the contiguous block of layers that changes the
residual stream least (Gromov et al., "The Unreasonable Ineffectiveness of the Deeper
Layers", ICLR 2025, arXiv:2403.17887).

With x^(ℓ) the residual stream entering layer ℓ (x^(L) the last layer's output, before
the final norm), the angular distance between layers ℓ and ℓ + n is
d(x^(ℓ), x^(ℓ+n)) = arccos(cos(x^(ℓ), x^(ℓ+n))) / π, taken on the final token of each
calibration window and averaged over windows, as in the paper. For n = round(R·L)
layers (whole layers, as ShortGPT and SLEB here) the block starting at
ℓ* = argmin_ℓ d(x^(ℓ), x^(ℓ+n)) is removed: layers ℓ* … ℓ* + n − 1, the paper's
Algorithm steps 1-4. ``heal=lora`` is its step 5: LoRA fine-tuning of the MLP
projections (the paper heals with QLoRA on the feed-forward modules; here the adapters
train on the unquantized model, since quantization is no part of this method) on the
calibration windows, for the budget given by ``steps``/``rank``/``lr``.

The paper has no official code. Only its angular criterion is implemented
(``metric=angular``); Kim et al.'s Taylor+ and PPL criteria (Shortened LLaMA) are not.

Keeps its own block loop: it records the stream after every block, the last one's included.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mpt_core.engine.layerwise import LayerInputs, capture_layer0_inputs, decoder_layers, run_block
from mpt_core.engine.lora import LORA_OPTIONS, MLP_PROJECTIONS, Budget, lora_finetune, recovery
from mpt_core.prune.blocks import blocks_to_remove, remove_blocks
from mpt_core.registry import Option, one_of, register
from mpt_core.storage import TensorStorage

METRICS = ("angular",)  # Kim et al.'s Taylor+ and PPL criteria are not implemented


@torch.no_grad()
def last_token_states(model, windows: torch.Tensor) -> torch.Tensor:
    """x^(0) … x^(L) at the final token of every window: (L + 1, windows, hidden), on the
    model's device. In float64, which is ours (the paper has no code): arccos is steep where
    cos is near 1, where the best blocks lie."""
    inputs = capture_layer0_inputs(model, windows)
    states = [inputs.hidden[:, -1].double()]
    for block in decoder_layers(model):
        outputs = run_block(block, inputs)
        states.append(outputs[:, -1].double())
        inputs = LayerInputs(outputs, inputs.kwargs)
    return torch.stack(states)


def angular_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """arccos(cos(a, b)) / π along the last dimension: 0 for parallel, 1 for opposite."""
    cosine = F.cosine_similarity(a, b, dim=-1).clamp(-1.0, 1.0)
    return torch.arccos(cosine) / math.pi


def block_distances(states: torch.Tensor, count: int) -> list[float]:
    """Mean d(x^(ℓ), x^(ℓ+n)) over windows for every start ℓ = 0 … L − n."""
    layers = states.shape[0] - 1
    return [
        angular_distance(states[start], states[start + count]).mean().item()
        for start in range(layers - count + 1)
    ]


@register(
    "depth",
    family="structured",
    levels={"ratio"},
    needs_calibration=True,
    options={
        "metric": Option(
            one_of(METRICS, "metric (Kim et al.'s taylor and ppl are not implemented)"),
            "angular",
            "block criterion: angular (Gromov et al.)",
        ),
        "heal": Option(recovery, "none", "LoRA healing of the MLPs after removal: none or lora"),
    }
    | LORA_OPTIONS,
)
def depth(model, stage, settings, calibration) -> dict[str, TensorStorage]:
    count = blocks_to_remove(model, stage.ratio)
    if count == 0:
        return {}
    windows = calibration.windows(settings)
    distances = block_distances(last_token_states(model, windows), count)
    start = min(range(len(distances)), key=distances.__getitem__)
    remove_blocks(model, list(range(start, start + count)))
    if settings["heal"] == "lora":
        return lora_finetune(model, windows, Budget.from_settings(settings), MLP_PROJECTIONS)
    return {}
