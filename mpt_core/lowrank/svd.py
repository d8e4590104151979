"""Plain truncated SVD: every linear of every block replaced by its best rank-k approximation.

The low-rank baseline of the study and of the SVD-LLM and ASVD papers (Eckart–Young:
the truncated SVD minimizes ‖W − W_k‖_F with no regard for the inputs). ``svd:R``
removes the fraction R of each layer's parameters: rank k with k·(m + n) = (1 − R)·m·n
(see ``mpt_core.lowrank.factorized``). No calibration data.
"""

from __future__ import annotations

import torch

from mpt_core.engine.layerwise import block_linears
from mpt_core.lowrank.factorized import check_ratio, rank_for_ratio, replace_linear, truncated_svd
from mpt_core.registry import register
from mpt_core.storage import TensorStorage


@register("svd", family="lowrank", levels={"ratio"})
@torch.no_grad()
def svd(model, stage, settings, calibration) -> dict[str, TensorStorage]:
    check_ratio(stage.ratio, "svd")
    storage: dict[str, TensorStorage] = {}
    for site, linear in block_linears(model):
        rank = rank_for_ratio(*linear.weight.shape, stage.ratio)
        if rank is None:
            continue
        u, vt = truncated_svd(linear.weight, rank)
        storage |= replace_linear(model, site, u, vt)
    return storage
