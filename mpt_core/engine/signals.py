"""Calibration signals several methods share: the input norms, the layer Hessian, its
damped inverse factor, a block's influence and the loss of the model's tail.

- ``InputNormStats``: ‖X_j‖₂² per input column as a running mean over samples, Wanda's
  ``scaler_row`` (``wanda/lib/layerwrapper.py::WrappedGPT``); with ``wanda_score``,
  |W_ij| · ‖X_j‖₂, the statistic of Wanda, RIA, BESA, DSnoT and OWL.
- ``HessianStats``: H = 2/n · Σ x xᵀ over calibration samples as a running mean, the
  statistic of GPTQ (``gptq.py::GPTQ.add_batch``) and SparseGPT (``sparsegpt.py``) alike.
- ``inverse_hessian_cholesky``: the upper Cholesky factor of (H + λI)⁻¹ both sweeps use.
- ``block_influence``: ShortGPT's Block Influence, 1 − cos(input, output) per block
  (used by ShortGPT and MoDeGPT).
- ``inputs_of_alive_blocks`` and ``loss_from``: what each remaining block receives with
  others skipped, and the next-token NLL of the calibration windows through a tail of
  blocks and the head (SLEB's and ASVD's sensitivity signal).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mpt_core.engine.layerwise import (
    LayerInputs,
    capture_layer0_inputs,
    decoder_layers,
    run_block,
    text_decoder,
)


class InputNormStats:
    """‖X_j‖₂² per input column j of one linear, averaged over calibration samples as
    Wanda's WrappedGPT does (``scaler_row``)."""

    def __init__(self, linear: nn.Linear):
        columns, device = linear.weight.shape[1], linear.weight.device
        self.scaler_row = torch.zeros(columns, device=device, dtype=torch.float32)
        self.nsamples = 0

    def add_batch(self, inp: torch.Tensor, _out: torch.Tensor | None = None) -> None:
        batch = inp.shape[0] if inp.dim() == 3 else 1
        X = inp.reshape(-1, inp.shape[-1]).t().float()  # (columns, tokens)
        # a running mean, so that the statistic does not depend on the batch split
        self.scaler_row *= self.nsamples / (self.nsamples + batch)
        self.nsamples += batch
        self.scaler_row += torch.norm(X, p=2, dim=1) ** 2 / self.nsamples


def wanda_score(W: torch.Tensor, scaler_row: torch.Tensor) -> torch.Tensor:
    """|W_ij| · ‖X_j‖₂ (Wanda's Eq. 1), ``scaler_row`` from ``InputNormStats``."""
    return W.abs().float() * torch.sqrt(scaler_row.reshape(1, -1))


class HessianStats:
    """H = 2/n · Σ x xᵀ of one linear's inputs, kept as a running mean over sequences."""

    def __init__(self, linear: nn.Linear):
        columns = linear.weight.shape[1]
        self.H = torch.zeros(columns, columns, device=linear.weight.device, dtype=torch.float32)
        self.nsamples = 0

    def add_batch(self, inp: torch.Tensor, _out: torch.Tensor | None = None) -> None:
        batch = inp.shape[0] if inp.dim() == 3 else 1
        X = inp.reshape(-1, inp.shape[-1]).t().float()  # (columns, tokens)
        self.H *= self.nsamples / (self.nsamples + batch)
        self.nsamples += batch
        X = math.sqrt(2 / self.nsamples) * X
        self.H += X @ X.t()


def inverse_hessian_cholesky(H: torch.Tensor, percdamp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + λI)⁻¹, λ = percdamp · mean(diag H): the rows the sweep
    needs, computed once and numerically stable (GPTQ's Cholesky reformulation). ``H`` is
    left as it was."""
    H = H.clone()
    H.diagonal().add_(percdamp * torch.mean(torch.diag(H)))
    H = torch.cholesky_inverse(torch.linalg.cholesky(H))
    return torch.linalg.cholesky(H, upper=True)


@torch.no_grad()
def block_influence(model: nn.Module, windows: torch.Tensor) -> list[float]:
    """BI of every decoder block: 1 − mean cosine between its input and output tokens."""
    inputs = capture_layer0_inputs(model, windows)
    influence = []
    for block in decoder_layers(model):
        outputs = run_block(block, inputs)
        cosine = F.cosine_similarity(inputs.hidden.float(), outputs.float(), dim=-1)
        influence.append(1 - cosine.mean().item())
        inputs = LayerInputs(outputs, inputs.kwargs)
    return influence


@torch.no_grad()
def inputs_of_alive_blocks(
    model: nn.Module, alive: list[int], windows: torch.Tensor
) -> list[LayerInputs]:
    """What each block of ``alive`` receives when the other blocks are skipped."""
    blocks = decoder_layers(model)
    inputs = capture_layer0_inputs(model, windows)
    entering = []
    for index in alive:
        entering.append(inputs)
        inputs = LayerInputs(run_block(blocks[index], inputs), inputs.kwargs)
    return entering


@torch.no_grad()
def loss_from(model: nn.Module, blocks: list, inputs: LayerInputs, windows: torch.Tensor) -> float:
    """Summed next-token NLL of ``windows`` when ``inputs`` run through ``blocks`` and the head."""
    for block in blocks:
        inputs = LayerInputs(run_block(block, inputs), inputs.kwargs)
    total = 0.0
    norm = text_decoder(model).norm
    for hidden, ids in zip(inputs.hidden, windows):
        logits = model.lm_head(norm(hidden[None]))[0, :-1].float()
        total += F.cross_entropy(logits, ids[1:].to(logits.device), reduction="sum").item()
    return total
