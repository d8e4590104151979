"""SparseGPT (Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be Accurately
Pruned in One-Shot", ICML 2023, arXiv:2301.00774).

Each linear layer is pruned column by column with the Optimal Brain Surgeon update:
removing w_q moves the not yet processed weights of its row by -(w_q / [H⁻¹]_qq) ·
H⁻¹_q,: where H = 2XXᵀ is the Hessian of the layer's squared reconstruction error. The
rows of H⁻¹ are read from the upper Cholesky factor of H⁻¹ (Algorithm 1), updates are
applied lazily in blocks of 128 columns, and the mask is chosen adaptively per block
by the OBS saliency w² / [H⁻¹]²_qq (for N:M, per group of M columns as it is reached).
H is dampened by 1% of its mean diagonal.

Mapping to the authors' code (IST-DASLab/sparsegpt ``SparseGPT.fasterprune``, as
vendored in locuslab/wanda ``lib/sparsegpt.py``): same Hessian running mean, dead
inputs, dampening, Cholesky inverse and block loop. One deliberate difference: their
per-block unstructured threshold ``tmp <= sorted[int(numel * ratio)]`` prunes one
weight more than the target in every block (and one even at ratio 0); here the block
mask is the shared ``unstructured_mask`` (exactly ``floor(numel * ratio)`` per block).

The Hessian is ``engine.signals.HessianStats`` and its damped inverse factor
``signals.inverse_hessian_cholesky`` (GPTQ's too); ``sparsegpt_prune(W, H, ...)`` is the
reusable core for methods built on SparseGPT (DSnoT, OWL).
"""

from __future__ import annotations

import torch
from torch import nn

from mpt_core.engine.layerwise import compress_layerwise
from mpt_core.engine.signals import HessianStats, inverse_hessian_cholesky
from mpt_core.errors import SpecError
from mpt_core.prune.mask import nm_mask, unstructured_mask
from mpt_core.registry import Option, float_in, positive_int, register
from mpt_core.storage import TensorStorage


def sparsegpt_prune(
    W: torch.Tensor,
    H: torch.Tensor,
    ratio: float = 0.0,
    n: int = 0,
    m: int = 0,
    blocksize: int = 128,
    percdamp: float = 0.01,
) -> torch.Tensor:
    """The pruned and updated copy of ``W`` (rows, columns), fp32: ``ratio`` of each block
    unstructured, or ``n`` of every ``m`` columns when ``n`` is set."""
    if n and (blocksize % m or W.shape[1] % m):
        raise SpecError(f"SparseGPT N:M needs M={m} to divide the block size and input width")
    W = W.clone().float()
    H = H.clone()
    dead = torch.diag(H) == 0  # inputs never active: prune them, keep H invertible
    H[dead, dead] = 1
    W[:, dead] = 0
    Hinv = inverse_hessian_cholesky(H, percdamp)
    for i1 in range(0, W.shape[1], blocksize):
        i2 = min(i1 + blocksize, W.shape[1])
        Hinv1 = Hinv[i1:i2, i1:i2]
        W1 = W[:, i1:i2].clone()
        mask1 = None if n else unstructured_mask(saliency(W1, Hinv1), ratio)
        Q1, Err1 = prune_block(W1, Hinv1, mask1, n, m)
        W[:, i1:i2] = Q1
        # the lazy update: the whole block's error reaches the later columns at once
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return W


def saliency(W1: torch.Tensor, Hinv1: torch.Tensor) -> torch.Tensor:
    """OBS saliency w² / [H⁻¹]²_qq (from the Cholesky factor's diagonal, as the reference)."""
    return W1**2 / torch.diag(Hinv1).reshape(1, -1) ** 2


def prune_block(
    W1: torch.Tensor, Hinv1: torch.Tensor, mask1: torch.Tensor | None, n: int, m: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Algorithm 1 inside one block: prune column i, spread its error on columns i+1..."""
    Q1 = torch.zeros_like(W1)
    Err1 = torch.zeros_like(W1)
    if mask1 is None:
        mask1 = torch.zeros_like(W1, dtype=torch.bool)
    for i in range(W1.shape[1]):
        if n and i % m == 0:
            # N:M decided as each group is reached, on the already updated weights
            mask1[:, i : i + m] = nm_mask(
                saliency(W1[:, i : i + m], Hinv1[i : i + m, i : i + m]), n, m
            )
        w = W1[:, i]
        d = Hinv1[i, i]
        q = w.clone()
        q[mask1[:, i]] = 0
        Q1[:, i] = q
        err1 = (w - q) / d
        W1[:, i:] -= err1.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
        Err1[:, i] = err1
    return Q1, Err1


@torch.no_grad()
def prune_linear(linear: nn.Linear, stats: HessianStats, stage, settings: dict) -> TensorStorage:
    n, m = stage.nm or (0, 0)
    W = sparsegpt_prune(
        linear.weight.data,
        stats.H,
        stage.ratio or 0.0,
        n,
        m,
        settings["blocksize"],
        settings["damp"],
    )
    linear.weight.data.copy_(W)
    return TensorStorage(nm=stage.nm)


@register(
    "sparsegpt",
    family="unstructured",
    levels={"ratio", "nm"},
    needs_calibration=True,
    options={
        "blocksize": Option(positive_int, 128, "columns per lazy-update block"),
        "damp": Option(
            float_in(0, 1, high_open=True),
            0.01,
            "dampening, a fraction of the mean Hessian diagonal",
        ),
    },
)
def sparsegpt(model, stage, settings, calibration) -> dict[str, TensorStorage]:
    return compress_layerwise(
        model,
        calibration.windows(settings),
        lambda _site, linear: HessianStats(linear),
        lambda _site, linear, stats: prune_linear(linear, stats, stage, settings),
    )
