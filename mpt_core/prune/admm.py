"""ADMM weight update with gradual pruning (Boža, "Fast and Effective Weight Update
for Pruned Large Language Models", TMLR 2024, arXiv:2401.02938).

Each linear layer solves min ‖XW − XŴ‖² subject to Ŵ having the target mask, by the
alternating direction method of multipliers: W (dense, least squares with the
penalty rho), Z (W + U projected onto the mask) and the scaled dual U. The mask
itself is chosen on |W + U| while the sparsity follows the cubic schedule
s_t = s − s·(1 − t/T)³ over the first T iterations, then stays fixed.

Mapping to the authors' code (``lib/admm.py``, ``AdmmPruner.fasterprune``; the
defaults of ``prune_admm``): inputs normalised by the column norms of X (so |W + U|
is Wanda's score), dampening ``percdamp=0.1`` of the mean Gram diagonal, ``rho=1``,
``iters=20``, ``iterative_prune=15``, the mask compared over the whole layer. Their
N:M branch hardcodes 2:4; here the same rule (the N:M winners kept, the rest
pruned up to s_t) is written for any N:M. Their unstructured branch computes s_t but
selects at the final sparsity from iteration 0; we follow the paper's gradual
schedule for both levels (docs/fidelity.md measures both).
"""

from __future__ import annotations

import torch

from mpt_core.engine.layerwise import compress_layerwise
from mpt_core.prune.mask import nm_mask, unstructured_mask
from mpt_core.registry import Option, positive_float, positive_int, register
from mpt_core.storage import TensorStorage


class GramStats:
    """Accumulates XᵀX over the calibration tokens seen by one linear, on ``device`` (the
    linear's: the activations that feed it are there)."""

    def __init__(self, columns: int, device: torch.device | str):
        self.XX = torch.zeros(columns, columns, device=device, dtype=torch.float32)

    def add_batch(self, inp: torch.Tensor, out: torch.Tensor) -> None:
        X = inp.reshape(-1, inp.shape[-1]).float()
        self.XX += X.T @ X


def cubic_sparsity(sparsity: float, iteration: int, prune_iters: int) -> float:
    """The gradual schedule s_t = s − s·(1 − (t+1)/T)³ (Zhu & Gupta), reaching s at t = T−1."""
    return sparsity - sparsity * (1 - (iteration + 1) / prune_iters) ** 3


def keep_mask(score: torch.Tensor, sparsity: float, nm: tuple[int, int] | None) -> torch.Tensor:
    """True where kept at sparsity s_t: the N:M winners always, the rest by score up to s_t."""
    if nm is None:
        return ~unstructured_mask(score, sparsity)
    winners = ~nm_mask(score, *nm)
    return ~unstructured_mask(score.masked_fill(winners, torch.inf), sparsity)


def admm_prune(
    weight: torch.Tensor,
    XX: torch.Tensor,
    sparsity: float,
    nm: tuple[int, int] | None = None,
    percdamp: float = 0.1,
    rho: float = 1.0,
    iters: int = 20,
    prune_iters: int = 15,
) -> torch.Tensor:
    """The pruned weight (same shape as ``weight``): ADMM on ‖X(W − Ŵ)‖², mask on |W + U|."""
    norm = XX.diag().sqrt() + 1e-8
    XX = XX / norm / norm[:, None]  # D⁻¹ XᵀX D⁻¹: unit-norm input columns
    W = (weight.float() * norm).contiguous()  # a restored weight may be a strided view
    eye = torch.eye(len(XX), device=XX.device, dtype=XX.dtype)
    XX = XX + percdamp * XX.diag().mean() * eye
    XY = W @ XX
    XXinv = torch.linalg.inv(XX + rho * eye)
    U = torch.zeros_like(W)
    mask = None
    for t in range(iters):
        if t < prune_iters:
            mask = keep_mask((W + U).abs(), cubic_sparsity(sparsity, t, prune_iters), nm)
        Z = (W + U) * mask
        U = U + (W - Z)
        W = (XY + rho * (Z - U)) @ XXinv
    Z = (W + U) * mask
    return (Z / norm).to(weight.dtype)


@register(
    "admm",
    family="unstructured",
    levels={"ratio", "nm"},
    needs_calibration=True,
    options={
        "iters": Option(positive_int, 20, "ADMM iterations"),
        "prune_iters": Option(positive_int, 15, "iterations over which the mask follows s_t"),
        "rho": Option(positive_float, 1.0, "ADMM penalty"),
        "percdamp": Option(positive_float, 0.1, "dampening, fraction of the mean Gram diagonal"),
    },
)
@torch.no_grad()
def admm(model, stage, settings, calibration) -> dict[str, TensorStorage]:
    nm = stage.nm
    sparsity = stage.sparsity
    prune_iters = min(settings["prune_iters"], settings["iters"])

    def make_stats(_site, linear):
        return GramStats(linear.in_features, linear.weight.device)

    def compress(_site, linear, stats):
        linear.weight.copy_(
            admm_prune(
                linear.weight,
                stats.XX,
                sparsity,
                nm,
                settings["percdamp"],
                settings["rho"],
                settings["iters"],
                prune_iters,
            )
        )
        return TensorStorage(nm=nm)

    return compress_layerwise(model, calibration.windows(settings), make_stats, compress)
