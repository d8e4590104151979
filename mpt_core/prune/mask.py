"""Mask selection shared by every unstructured and N:M pruning method.

A method computes a score per weight (higher = more important); these
functions choose which weights to prune. N:M prunes the ``n`` lowest-scored
weights in every group of ``m`` consecutive input columns of each row, as in
Wanda's and SparseGPT's code.
"""

from __future__ import annotations

import torch

from mpt_core.errors import SpecError

SCOPES = ("layer", "row")


def unstructured_mask(score: torch.Tensor, ratio: float, scope: str = "layer") -> torch.Tensor:
    """Boolean mask, True where pruned: exactly floor(ratio * count) lowest scores.

    ``scope="layer"`` compares all weights of the matrix; ``"row"`` compares within
    each output row (Wanda's comparison group), pruning floor(ratio * columns) per row.
    """
    mask = torch.zeros_like(score, dtype=torch.bool)
    if scope == "layer":
        k = int(score.numel() * ratio)
        order = torch.argsort(score.flatten(), stable=True)
        mask.view(-1)[order[:k]] = True
    elif scope == "row":
        k = int(score.shape[1] * ratio)
        order = torch.argsort(score, dim=1, stable=True)
        mask.scatter_(1, order[:, :k], True)
    else:
        raise SpecError(f"unknown pruning scope {scope!r}: choose one of {', '.join(SCOPES)}")
    return mask


def nm_mask(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Boolean mask pruning the ``n`` lowest scores in every ``m`` consecutive columns."""
    rows, cols = score.shape
    if cols % m:
        raise SpecError(f"N:M with M={m} needs the input width ({cols}) to be a multiple of {m}")
    groups = score.reshape(rows, cols // m, m)
    lowest = torch.topk(groups, n, dim=2, largest=False).indices
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(2, lowest, True)
    return mask.reshape(rows, cols)


def select_mask(score: torch.Tensor, stage, scope: str = "layer") -> torch.Tensor:
    """The mask a stage asks for: N:M when it has an N:M level, else its ratio."""
    if stage.level_kind == "nm":
        return nm_mask(score, stage.n, stage.m)
    return unstructured_mask(score, stage.ratio, scope)
