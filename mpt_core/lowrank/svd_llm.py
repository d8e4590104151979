"""SVD-LLM: truncation-aware data whitening (Wang et al., ICLR 2025, arXiv:2403.07378).

Plain SVD truncates the smallest singular values of W, but a small σ of W need not
mean a small change of the layer's *output*. SVD-LLM whitens first: with S the
Cholesky factor of the calibration Gram matrix (X Xᵀ = S Sᵀ), the SVD of W·S has the
property that dropping σ_i changes the output by exactly σ_i, so
‖W X − W' X‖_F² = Σ_{i>k} σ_i² (Theorem 3.1): truncating the smallest σ of W·S is
the optimal rank-k choice for the calibration data. The layer is stored as
U_k·√Σ_k and √Σ_k·V_kᵀ·S⁻¹.

As the authors' ``profle_svdllm`` / ``whitening``: X Xᵀ is accumulated in float32
from the dense model's activations (every block sees the uncompressed inputs), on the
weights' device as their forward hook does, Cholesky in float64 with their shift of the
spectrum when X Xᵀ is not positive definite, rank k = ⌊(1 − R)·m·n / (m + n)⌋. Their
optional sequential parameter update of U (the "SVD-LLM (U)" variant) is not part of
``svd_llm``.

Precision: float64 for the Cholesky factor is the authors' (``.double()`` before
``torch.linalg.cholesky``). The SVD of W·S and the solve against S are float64 here, while
the authors cast S and S⁻¹ back to float32 and take the SVD of ``W.float() @ S`` in
float32; ours keeps float64 (an exact reference, and the results recorded so far).
"""

from __future__ import annotations

import torch

from mpt_core.engine.layerwise import LinearSite, collect_stats, iterate_blocks, linear_layers
from mpt_core.lowrank.factorized import check_ratio, rank_for_ratio, replace_linear, split_sigma
from mpt_core.registry import register
from mpt_core.storage import TensorStorage


class Gram:
    """X Xᵀ of a linear's inputs over the calibration tokens (in × in, float32 as the
    authors), kept on ``device`` (the weights'), where the activations are."""

    def __init__(self, in_features: int, device: torch.device | str):
        self.XXt = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)

    def add_batch(self, inp: torch.Tensor, out: torch.Tensor) -> None:
        X = inp.reshape(-1, inp.shape[-1]).float()
        self.XXt += X.T @ X


def whitening_factor(XXt: torch.Tensor) -> torch.Tensor:
    """Lower-triangular S with S Sᵀ = X Xᵀ; a rank-deficient Gram is shifted as the authors do."""
    XXt = XXt.double()
    S, info = torch.linalg.cholesky_ex(XXt)
    if info != 0:
        smallest = torch.linalg.eigvalsh(XXt)[0]
        identity = torch.eye(len(XXt), dtype=XXt.dtype, device=XXt.device)
        S = torch.linalg.cholesky(XXt + (1e-6 - smallest) * identity)
    return S


def whitened_svd(
    W: torch.Tensor, S: torch.Tensor, rank: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Factors (U_k√Σ_k, √Σ_k V_kᵀ S⁻¹) of W and the singular values of W·S, in float64
    (the authors: float32; see the module's docstring)."""
    S = S.to(W.device)
    U, sigma, Vt = torch.linalg.svd(W.double() @ S, full_matrices=False)
    u, vt_whitened = split_sigma(U, sigma, Vt, rank)
    # vt = vt_whitened · S⁻¹, solved against the triangular S instead of inverting it
    vt = torch.linalg.solve_triangular(S, vt_whitened, upper=False, left=False)
    return u, vt, sigma


@register("svd_llm", family="lowrank", levels={"ratio"}, needs_calibration=True)
@torch.no_grad()
def svd_llm(model, stage, settings, calibration) -> dict[str, TensorStorage]:
    check_ratio(stage.ratio, "svd_llm")
    storage: dict[str, TensorStorage] = {}
    windows = calibration.windows(settings)
    for index, block, inputs in iterate_blocks(model, windows, propagate="dense"):
        grams = collect_stats(
            block,
            inputs,
            lambda _site, linear: Gram(linear.in_features, linear.weight.device),
            index,
        )
        for name, linear in linear_layers(block).items():
            rank = rank_for_ratio(*linear.weight.shape, stage.ratio)
            if rank is None:
                continue
            S = whitening_factor(grams.pop(name).XXt)
            u, vt, _ = whitened_svd(linear.weight, S, rank)
            storage |= replace_linear(model, LinearSite(index, name), u, vt)
    return storage
