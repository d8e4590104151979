"""The factorized linear layer every low-rank method stores, and how it replaces a Linear.

A rank-k layer ``y = U (Vᵀ x) + b`` keeps two matrices, ``u`` (out × k) and ``vt``
(k × in): k·(m + n) parameters instead of m·n, so the footprint counts what is
really stored. The split of Σ between the factors follows the authors' code
(SVD-LLM and ASVD both store U·√Σ and √Σ·Vᵀ).

The rank budget is the study's: ``R`` is the fraction of a layer's parameters
removed, so k·(m + n) = (1 − R)·m·n, rounded down to a whole rank. At ``R = 0``
the dense matrix itself fits the budget and is kept.

``truncated_svd`` (Eckart–Young) is here, not in the ``svd`` method's module, because
LoSparse and Lillama start from it too.
"""

from __future__ import annotations

import torch
from torch import nn

from mpt_core.engine.layerwise import LinearSite, weight_name
from mpt_core.engine.modules import replace_module
from mpt_core.errors import SpecError
from mpt_core.storage import TensorStorage


class LowRankLinear(nn.Module):
    """``y = u(vt(x))``: a Linear stored as two thin factors."""

    def __init__(self, u: torch.Tensor, vt: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.in_features, self.out_features, self.rank = vt.shape[1], u.shape[0], u.shape[1]
        like = {"dtype": u.dtype, "device": u.device}
        self.vt = nn.Linear(self.in_features, self.rank, bias=False, **like)
        self.u = nn.Linear(self.rank, self.out_features, bias=bias is not None, **like)
        with torch.no_grad():
            self.vt.weight.copy_(vt)
            self.u.weight.copy_(u)
            if bias is not None:
                self.u.bias.copy_(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.u(self.vt(x))


def rank_for_ratio(out_features: int, in_features: int, ratio: float) -> int | None:
    """The rank k with k·(m + n) <= (1 − R)·m·n; None when the dense matrix fits (R = 0)."""
    if ratio <= 0:
        return None
    rank = int((1 - ratio) * out_features * in_features // (out_features + in_features))
    if rank < 1:
        raise SpecError(
            f"ratio {ratio} leaves no rank for a {out_features}x{in_features} layer; "
            "use a smaller ratio"
        )
    return rank


def split_sigma(
    U: torch.Tensor, S: torch.Tensor, Vt: torch.Tensor, rank: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rank-k factors (U_k·√Σ_k, √Σ_k·Vᵀ_k) of an SVD ``U diag(S) Vt``."""
    root = S[:rank].sqrt()
    return U[:, :rank] * root, root[:, None] * Vt[:rank]


def truncated_svd(W: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors (U_k·√Σ_k, √Σ_k·Vᵀ_k) of the best rank-k approximation of W, in float64, on
    W's device. float64 is ours: Lillama's ``_init_svd`` takes the SVD in float32 and
    LoSparse's ``low_rank_decomposition`` in the weights' dtype; float64 keeps the results
    recorded so far."""
    U, S, Vt = torch.linalg.svd(W.double(), full_matrices=False)
    return split_sigma(U, S, Vt, rank)


def replace_linear(
    model: nn.Module, site: LinearSite, u: torch.Tensor, vt: torch.Tensor
) -> dict[str, TensorStorage]:
    """Put a LowRankLinear with factors ``u``, ``vt`` where the linear at ``site`` was.

    Returns the storage of the two new weights under their full parameter names.
    """
    linear = model.get_submodule(site.path)
    weight = linear.weight
    like = {"dtype": weight.dtype, "device": weight.device}
    replace_module(model, site.path, LowRankLinear(u.to(**like), vt.to(**like), linear.bias))
    return {weight_name(site.index, f"{site.name}.{part}"): TensorStorage() for part in ("u", "vt")}


def check_ratio(ratio: float, method: str, highest: float = 0.95) -> None:
    if not 0 <= ratio <= highest:
        raise SpecError(
            f"{method} takes a ratio in [0, {highest}] (parameters removed); got {ratio}"
        )
