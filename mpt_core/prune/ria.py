"""RIA: relative importance and activations (Zhang, Bai, Lin, Zhao, Hou & Cannistraci,
"Plug-and-Play: An Efficient Post-training Pruning Method for Large Language Models",
ICLR 2024).

The score of W_ij is its relative importance, |W_ij| divided by the sum of |W| over its
input column plus |W_ij| divided by the sum of |W| over its output row, times the
activation norm to the power a: (|W_ij|/Σ_k|W_kj| + |W_ij|/Σ_k|W_ik|) · ‖X_j‖₂^a, a=0.5.
Because the score is already normalised along both axes, the comparison group is the
whole layer. For N:M the input channels are first permuted so that each group of M
holds channels of mixed importance (heuristic channel reallocation, then one linear
sum assignment per position within the group); the N:M mask is taken in that order
and the permutation is stored with the weight.

Mapping to the authors' code (biomedical-cybernetics/Relative-importance-and-activation-
pruning, ``lib/prune.py::prune_ria``): the score line is theirs; unstructured is their
default layer-wide threshold (``per_outneuron`` off; ``scope=row`` gives that switch);
``permute`` is ``--reallocation --lsa`` with ``importance_score=sum`` and without
``--fast``. Their score matrix for the assignment sorts a (rows × groups × M) tensor
once per group; here the same matrix comes from one identity (see ``lsa_scores``).
Their layer threshold ``W_metric <= sorted[int(numel * ratio)]`` prunes one weight more
than ``floor(numel * ratio)``; the shared ``unstructured_mask`` prunes exactly that many.
"""

from __future__ import annotations

import math

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from mpt_core.engine.layerwise import compress_layerwise
from mpt_core.engine.signals import InputNormStats
from mpt_core.prune.mask import SCOPES, nm_mask, unstructured_mask
from mpt_core.registry import Option, flag, nonnegative_float, one_of, register
from mpt_core.storage import TensorStorage


def ria_score(W: torch.Tensor, scaler_row: torch.Tensor, alpha: float) -> torch.Tensor:
    """(|W|/column sum + |W|/row sum) · ‖X_j‖₂^a (the paper's Eq. 3 with activations)."""
    A = W.abs().float()
    relative = A / torch.sum(A, dim=0) + A / torch.sum(A, dim=1).reshape(-1, 1)
    return relative * torch.sqrt(scaler_row.reshape(1, -1)) ** alpha


def reallocation(score: torch.Tensor, m: int) -> torch.Tensor:
    """Heuristic channel reallocation: channels sorted by total score are dealt into
    position k of every group from the k-th slice of the order, alternate slices reversed,
    so that strong and weak channels share groups. Returns the column order."""
    columns = score.shape[1]
    sorted_idx = torch.sort(torch.sum(score, dim=0))[1]
    index = torch.zeros_like(sorted_idx)
    for k in range(m):
        part = sorted_idx[columns * k // m : columns * (k + 1) // m]
        index[k::m] = part if k % 2 == 0 else part.flip(0)
    return index


def lsa_scores(S: torch.Tensor, position: int, n: int, m: int) -> torch.Tensor:
    """kept[j, i]: the score N:M keeps in group j when its channel at ``position`` is the one
    now at ``position`` of group i, summed over rows.

    With the group's other M-1 scores sorted, o_1 <= ... <= o_{M-1}, and the candidate c,
    the N lowest of the M sum to o_1 + ... + o_{N-1} + min(c, o_N); so kept = total - that.
    """
    rows, columns = S.shape
    groups = S.reshape(rows, columns // m, m)
    others = torch.cat([groups[:, :, :position], groups[:, :, position + 1 :]], dim=2)
    o = torch.sort(others, dim=2)[0]  # (rows, groups, m-1)
    candidate = groups[:, :, position]  # (rows, groups)
    fixed = (others.sum(2) - o[:, :, : n - 1].sum(2)).sum(0)  # per target group j
    lowest = torch.stack(
        [torch.minimum(candidate, o[:, j : j + 1, n - 1]).sum(0) for j in range(o.shape[1])]
    )
    return fixed.reshape(-1, 1) + candidate.sum(0).reshape(1, -1) - lowest


def channel_permutation(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """The column order RIA prunes N:M in: reallocation, then a linear sum assignment for
    each position within the groups (the channels at that position swap between groups)."""
    index = reallocation(score, m)
    group_starts = torch.arange(score.shape[1] // m, device=score.device) * m
    for position in range(m):
        kept = lsa_scores(score[:, index], position, n, m)
        # scipy's Hungarian solver runs on the host; the matrix is only groups x groups
        _, source = linear_sum_assignment(kept.cpu().numpy(), maximize=True)
        source = torch.as_tensor(source, device=score.device)
        permuted = index.clone()
        permuted[group_starts + position] = index[source * m + position]
        index = permuted
    return index


def ria_mask(score: torch.Tensor, stage, settings: dict) -> tuple[torch.Tensor, int]:
    """The mask (True = pruned) and the bits of the channel permutation it needs."""
    if stage.nm is None:
        return unstructured_mask(score, stage.ratio, settings["scope"]), 0
    if not settings["permute"]:
        return nm_mask(score, stage.n, stage.m), 0
    index = channel_permutation(score, stage.n, stage.m)
    mask = torch.zeros_like(score, dtype=torch.bool)
    mask[:, index] = nm_mask(score[:, index], stage.n, stage.m)
    columns = score.shape[1]
    return mask, columns * math.ceil(math.log2(columns))


@torch.no_grad()
def prune_linear(linear: nn.Linear, stats: InputNormStats, stage, settings: dict) -> TensorStorage:
    W = linear.weight.data
    mask, permutation_bits = ria_mask(
        ria_score(W, stats.scaler_row, settings["alpha"]), stage, settings
    )
    W[mask] = 0
    return TensorStorage(nm=stage.nm, extra_bits=permutation_bits)


@register(
    "ria",
    family="unstructured",
    levels={"ratio", "nm"},
    needs_calibration=True,
    options={
        "alpha": Option(nonnegative_float, 0.5, "exponent a of the activation norm"),
        "scope": Option(
            one_of(SCOPES, "scope"), "layer", "comparison group: layer (theirs) or row"
        ),
        "permute": Option(flag, True, "N:M channel permutation (reallocation + LSA)"),
    },
)
def ria(model, stage, settings, calibration) -> dict[str, TensorStorage]:
    return compress_layerwise(
        model,
        calibration.windows(settings),
        lambda _site, linear: InputNormStats(linear),
        lambda _site, linear, stats: prune_linear(linear, stats, stage, settings),
    )
