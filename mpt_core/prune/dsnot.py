"""DSnoT: Dynamic Sparse No Training (Zhang, Zhao, Lin et al., "Dynamic Sparse No
Training: Training-Free Fine-tuning for Sparse LLMs", ICLR 2024, arXiv:2310.08915).

Starting from a sparse layer (Wanda's or SparseGPT's mask), each output row r swaps
one pruned weight for one kept weight per cycle, steered by the expected
reconstruction error ε_r = Σ_j (W_rj − Ŵ_rj)·E[x_j]. Growing: the pruned weight with
the largest W_rj·E[x_j] / Var(x_j) of the sign of ε_r. Pruning: among kept weights
whose W_rj·E[x_j] has the opposite sign, the one of lowest Wanda score. A row stops
when |ε_r| falls to the update threshold, when a swap would flip the sign of ε_r, when
its candidates run out, or after the maximum number of cycles. DSnoT itself updates no
weight and keeps the sparsity of every row (and of every N:M group).

Mapping to the authors' code (zyxxmu/DSnoT, ``lib/prune.py::prune_DSnoT`` and
``lib/layerwrapper.py``): ``sum_metric_row`` (per-sample token sums of x, averaged
over samples) is E[x] and sets the scale of ``update_threshold=0.1``; ``var`` is their
running per-sample variance; ``max_cycle_time=50``, ``pow_of_var_regrowing=1``; the
unstructured pointer walk over the sorted growing and pruning lists, and for N:M the
victim chosen in the grown weight's group of M. Their default ``--skip_layer mlp``
leaves the MLP projections at the initial mask (``skip=mlp`` here, the default).
Their ``--without_same_sign`` is ``type=bool`` and so always true; ``same_sign=true``
(default) is the paper's rule, which keeps |ε_r| from growing; ``same_sign=false`` is
their code as run. Their ``init=sparsegpt`` path never accumulates the Hessian; here
it is SparseGPT itself (mask and weight update, ``sparsegpt_prune``), after which a
grown weight gets its dense value and ε_r counts the update (W − Ŵ).

Imports sparsegpt_prune: DSnoT's init=sparsegpt runs on SparseGPT's mask and update by design.
"""

from __future__ import annotations

import torch
from torch import nn

from mpt_core.engine.layerwise import compress_layerwise
from mpt_core.engine.signals import HessianStats, InputNormStats, wanda_score
from mpt_core.prune.mask import select_mask
from mpt_core.prune.sparsegpt import sparsegpt_prune
from mpt_core.registry import Option, flag, nonnegative_float, one_of, positive_int, register
from mpt_core.storage import TensorStorage

INITS = ("wanda", "sparsegpt")
SKIPS = ("mlp", "self_attn", "none")


class DSnoTStats:
    """E[x_j] and Var(x_j) as the reference's WrappedGPT keeps them, plus the initial
    method's statistics (Wanda's ‖X_j‖² always: it ranks pruning candidates)."""

    def __init__(self, linear: nn.Linear, init: str):
        columns = linear.in_features
        self.wanda = InputNormStats(linear)
        self.sparsegpt = HessianStats(linear) if init == "sparsegpt" else None
        like = dict(device=linear.weight.device, dtype=torch.float32)
        self.sum_metric_row = torch.zeros(columns, **like)
        self.var = torch.zeros(columns, **like)
        self.nsamples = 0
        self.ntokens = 0

    def add_batch(self, inp: torch.Tensor, out: torch.Tensor) -> None:
        self.wanda.add_batch(inp, out)
        if self.sparsegpt is not None:
            self.sparsegpt.add_batch(inp, out)
        # one sample at a time: the reference's variance is a running mean of per-sample ones
        for sample in inp.reshape(-1, *inp.shape[-2:]).float():
            self._add_sample(sample)

    def _add_sample(self, X: torch.Tensor) -> None:
        tokens = X.shape[0]
        var = X.var(dim=0, unbiased=False)
        self.var = (self.var * self.ntokens + var * tokens) / (self.ntokens + tokens)
        self.ntokens += tokens
        self.sum_metric_row *= self.nsamples / (self.nsamples + 1)
        self.nsamples += 1
        self.sum_metric_row += X.sum(dim=0) / self.nsamples


def _take(order: torch.Tensor, pointers: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """Per row, the entry of ``order`` under the front (end=0) or back (end=1) pointer,
    then move that pointer one step inwards.

    Every row walks each cycle, stopped or not, so a short list's pointer can run off its
    end; such a row reads its last entry again, a weight it has already swapped (or one
    it stopped at), which ``_candidates_left`` refuses: the row stays stopped."""
    position = pointers.gather(1, end)
    pointers.scatter_(1, end, position + torch.where(end == 0, 1, -1))
    return order.gather(1, position.clamp(0, order.shape[1] - 1))


def _candidates_left(pruned: torch.Tensor, grow: torch.Tensor, prune: torch.Tensor):
    """Whether a row's pointers still stand on a pruned weight to grow and a kept one to
    prune. Past that the reference walks off its lists (an index error) or onto weights
    it already swapped (the sparsity changes); mpt stops the row there."""
    return pruned.gather(1, grow) & ~pruned.gather(1, prune)


def _swap(pruned, grow: torch.Tensor, prune: torch.Tensor, update: torch.Tensor) -> None:
    """In the rows that update, grow ``grow`` and prune ``prune``; other rows unchanged."""
    grown, cut = pruned.gather(1, grow) & ~update, pruned.gather(1, prune) | update
    pruned.scatter_(1, prune, cut)
    pruned.scatter_(1, grow, grown)


def _pointers(lengths: torch.Tensor) -> torch.Tensor:
    """Front and back pointers of per-row lists of the given lengths."""
    return torch.stack([torch.zeros_like(lengths), (lengths - 1).clamp(min=0)], dim=1)


def pruning_order(dsnot_metric: torch.Tensor, score: torch.Tensor, pruned: torch.Tensor):
    """The reference's list of pruning candidates per row, and its length: kept weights
    with W·E[x] < 0 (lowest Wanda score first), then those with W·E[x] > 0 (lowest score
    last); the rest of the row after them, outside the list."""
    group = torch.full_like(score, 2, dtype=torch.long)
    group[(dsnot_metric < 0) & ~pruned] = 0
    group[(dsnot_metric > 0) & ~pruned] = 1
    key = torch.where(group == 0, score, torch.where(group == 1, -score, 0))
    by_score = torch.argsort(key, dim=1, stable=True)
    order = by_score.gather(1, torch.argsort(group.gather(1, by_score), dim=1, stable=True))
    return order, (group < 2).sum(dim=1)


def growing_order(dsnot_metric: torch.Tensor, var: torch.Tensor, pruned: torch.Tensor):
    """Pruned weights by W·E[x] / Var(x) ascending; kept ones sit at 0 in the middle."""
    metric = torch.where(pruned, dsnot_metric, 0) / var.reshape(1, -1)
    return torch.argsort(metric, dim=1, stable=True)


def dsnot_unstructured(W, W_hat, pruned, mean, var, score, max_cycle, threshold, same_sign):
    """The pruning mask after DSnoT's cycles on unstructured rows (True = pruned)."""
    pruned = pruned.clone()
    grow_metric, prune_metric_all = W * mean, W_hat * mean
    error = ((W - W_hat) * mean).sum(dim=1, keepdim=True)  # ε_r
    sign0 = torch.sign(error)
    grow_order = growing_order(grow_metric, var, pruned)
    prune_order, candidates = pruning_order(prune_metric_all, score, pruned)
    # past its own sign the walk goes on into the other: the reference's, as it runs
    grow_ptr, prune_ptr = _pointers(torch.full_like(candidates, W.shape[1])), _pointers(candidates)
    update = torch.ones_like(error, dtype=torch.bool)
    for _ in range(max_cycle):
        if not update.any():
            break
        grow = _take(grow_order, grow_ptr, (error > 0).long())
        prune = _take(prune_order, prune_ptr, (error < 0).long())
        delta = prune_metric_all.gather(1, prune) - grow_metric.gather(1, grow)
        update &= (error.abs() > threshold) & _candidates_left(pruned, grow, prune)
        if same_sign:
            update &= torch.sign(error + delta) == sign0
        _swap(pruned, grow, prune, update)
        error += torch.where(update, delta, 0)
    return pruned


def dsnot_nm(W, W_hat, pruned, mean, var, score, m, max_cycle, threshold):
    """The N:M mask after DSnoT's cycles: each grown weight evicts the lowest-scored kept
    weight of its own group of M, so every group keeps its count."""
    pruned = pruned.clone()
    grow_metric, prune_metric_all = W * mean, W_hat * mean
    error = ((W - W_hat) * mean).sum(dim=1, keepdim=True)
    sign0 = torch.sign(error)
    grow_order = growing_order(grow_metric, var, pruned)
    grow_ptr = _pointers(torch.full((W.shape[0],), W.shape[1], device=W.device))
    score = score.masked_fill(pruned, torch.inf)
    update = torch.ones_like(error, dtype=torch.bool)
    for _ in range(max_cycle):
        if not update.any():
            break
        grow = _take(grow_order, grow_ptr, (error > 0).long())
        start = grow - grow % m
        group = start + torch.arange(m, device=start.device)
        prune = start + score.gather(1, group).argmin(dim=1, keepdim=True)
        delta = prune_metric_all.gather(1, prune) - grow_metric.gather(1, grow)
        update &= (torch.sign(error + delta) == sign0) & (error.abs() > threshold)
        update &= _candidates_left(pruned, grow, prune)
        score.scatter_(1, prune, torch.inf)
        _swap(pruned, grow, prune, update)
        error += torch.where(update, delta, 0)
    return pruned


def initial_sparse(W: torch.Tensor, stats: DSnoTStats, stage) -> torch.Tensor:
    """The initial sparse weights Ŵ: Wanda's mask, or SparseGPT's mask and update."""
    if stats.sparsegpt is not None:
        n, m = stage.nm or (0, 0)
        return sparsegpt_prune(W, stats.sparsegpt.H, stage.ratio or 0.0, n, m)
    pruned = select_mask(wanda_score(W, stats.wanda.scaler_row), stage, scope="row")
    return W.masked_fill(pruned, 0)


@torch.no_grad()
def prune_linear(name: str, linear: nn.Linear, stats: DSnoTStats, stage, settings) -> TensorStorage:
    nm = stage.nm
    W = linear.weight.float()
    W_hat = initial_sparse(W, stats, stage)
    if name.split(".")[0] != settings["skip"]:
        W_hat = dsnot(W, W_hat, stats, nm, settings)
    linear.weight.copy_(W_hat)
    return TensorStorage(nm=nm)


def dsnot(W, W_hat, stats: DSnoTStats, nm, settings) -> torch.Tensor:
    """Ŵ after the cycles: swapped-out weights zeroed, grown ones back at their dense value."""
    initial = W_hat == 0
    mean, var = stats.sum_metric_row, stats.var ** settings["pow_var"]
    score = wanda_score(W_hat, stats.wanda.scaler_row)
    cycles, threshold = settings["max_cycle"], settings["threshold"]
    if nm is None:
        pruned = dsnot_unstructured(
            W, W_hat, initial, mean, var, score, cycles, threshold, settings["same_sign"]
        )
    else:
        pruned = dsnot_nm(W, W_hat, initial, mean, var, score, nm[1], cycles, threshold)
    return torch.where(pruned, 0, torch.where(initial, W, W_hat))


@register(
    "dsnot",
    family="unstructured",
    levels={"ratio", "nm"},
    needs_calibration=True,
    options={
        "init": Option(one_of(INITS), "wanda", "initial mask: wanda or sparsegpt"),
        "max_cycle": Option(positive_int, 50, "maximum pruning-and-growing cycles"),
        "threshold": Option(nonnegative_float, 0.1, "stop a row once |ε| is at most this"),
        "pow_var": Option(nonnegative_float, 1.0, "power of Var(x) in the growing criterion"),
        "same_sign": Option(flag, True, "reject a swap that flips the sign of ε"),
        "skip": Option(one_of(SKIPS), "mlp", "linears left at the initial mask"),
    },
)
def dsnot_method(model, stage, settings, calibration) -> dict[str, TensorStorage]:
    return compress_layerwise(
        model,
        calibration.windows(settings),
        lambda _site, linear: DSnoTStats(linear, settings["init"]),
        lambda site, linear, stats: prune_linear(site.name, linear, stats, stage, settings),
    )
