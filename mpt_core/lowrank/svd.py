"""Plain truncated SVD: every linear of every block replaced by its best rank-k approximation.

The low-rank baseline of the study and of the SVD-LLM and ASVD papers (Eckart–Young:
the truncated SVD minimizes ‖W − W_k‖_F with no regard for the inputs). ``svd:R``
removes the fraction R of each layer's parameters: rank k with k·(m + n) = (1 − R)·m·n
(see ``mpt_core.lowrank.factorized``). No calibration data.
"""

from __future__ import annotations

import torch

from mpt_core.engine.layerwise import decoder_layers, linear_layers
from mpt_core.lowrank.factorized import check_ratio, rank_for_ratio, replace_linear, split_sigma
from mpt_core.registry import register
from mpt_core.storage import TensorStorage


def truncated_svd(W: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors (U_k·√Σ_k, √Σ_k·Vᵀ_k) of the best rank-k approximation of W, in float64."""
    U, S, Vt = torch.linalg.svd(W.double(), full_matrices=False)
    return split_sigma(U, S, Vt, rank)


@register("svd", family="lowrank", levels={"ratio"})
@torch.no_grad()
def svd(model, stage, settings, calibration) -> dict[str, TensorStorage]:
    check_ratio(stage.ratio, "svd")
    storage: dict[str, TensorStorage] = {}
    for index, block in enumerate(decoder_layers(model)):
        for name, linear in linear_layers(block).items():
            rank = rank_for_ratio(*linear.weight.shape, stage.ratio)
            if rank is None:
                continue
            u, vt = truncated_svd(linear.weight, rank)
            storage |= replace_linear(block, name, u, vt, f"model.layers.{index}")
    return storage
