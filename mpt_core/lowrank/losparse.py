"""LoSparse: low-rank plus structured-sparse approximation (Li, Yu, Zhang, Liang, He, Chen and
Zhao, "LoSparse: Structured Compression of Large Language Models based on Low-Rank and Sparse
Approximation", ICML 2023, arXiv:2306.11222).

A weight is W ≈ U V + S: U V carries the coherent part (the top-k singular directions) and
S, a sparse matrix of whole neurons (output rows), carries what a low rank cannot: LoSparse
initialises U V from the SVD of W and S = W − U V, then trains U, V and S while pruning S
iteratively, by importance, to its final density. The importance of an entry is PLATON's
smoothed sensitivity |θ · ∇θ L|: averaged over each window of ``deltaT`` steps, then an
exponential moving average (β₁) across windows; a row's importance is its mean. Rows are
ranked globally over all layers, and the kept fraction follows a cubic schedule from all of
S down to the final budget between an initial and a final warm-up.

As the authors' code (yxli2123/LoSparse, ``utils.py``: ``low_rank_decomposition``,
``LinearLoSparse``, ``Pruner`` with ``pruner_name='PLATON'``, ``structured_method='mean'``,
``structured_direction='row'``, ``beta1=0.85``, ``beta2=1``, i.e. no uncertainty term; and
``run_glue.py``: AdamW without weight decay, linear learning-rate schedule with warm-up),
with these differences, all forced by measuring a pretrained LLM on a CPU:

- the loss is next-token cross-entropy on the calibration windows (theirs: the downstream
  task), and only the LoSparse layers train (theirs: the whole model, which would also
  change the tensors the footprint counts as untouched);
- the step budget is explicit (``steps``, ``batch``), and the schedule keeps the MNLI
  command's proportions: initial warm-up 675 and final warm-up 5 × 675 of its 12,272 steps,
  learning-rate warm-up 480 of them; ``deltaT`` defaults to 1 (theirs 10 on 12k steps);
- ``steps=0`` is the paper's initialisation with S pruned once, to the final budget, by the
  same sensitivity accumulated over the calibration windows without any weight update;
- ``R`` is a storage budget: per layer k(m + n) + (kept rows of S)·n values plus
  ⌈log₂ m⌉ index bits per kept row fit (1 − R)·m·n values; ``rank_share`` of that is the
  low-rank part (0.25: the MNLI command's 0.05 of 0.20), the rest goes to S rows, ranked
  globally. The pruned S is stored as its kept rows and their indices, as the authors'
  ``prune_sparse``.

Devices and precision: the sensitivities live on the weights' device and rows are ranked
there, as the reference's ``Pruner`` scores and thresholds on the parameters' device; they
are accumulated in float64 where the reference keeps the parameters' dtype (float64 keeps
the results recorded so far).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mpt_core.engine.layerwise import block_linears
from mpt_core.engine.modules import replace_module
from mpt_core.engine.training import batches, in_fp32, training_only
from mpt_core.errors import SpecError
from mpt_core.lowrank.factorized import check_ratio, truncated_svd
from mpt_core.registry import Option, float_in, positive_float, positive_int, register
from mpt_core.storage import FP16_BITS, TensorStorage

INITIAL_WARMUP = 675 / 12272  # fractions of the steps, from the reference's MNLI command
FINAL_WARMUP = 5 * 675 / 12272
LR_WARMUP = 480 / 12272
FRACTION = float_in(0, 1, low_open=True, high_open=True)


def _steps(value: str) -> int:
    """0, or 3 and more: no shared parser has the gap."""
    number = int(value)
    if number < 0 or 0 < number < 3:
        raise ValueError("must be 0 (initialisation only) or at least 3 (warm-ups and pruning)")
    return number


def _linear(weight: torch.Tensor, bias: torch.Tensor | None = None) -> nn.Linear:
    out_features, in_features = weight.shape
    like = {"dtype": weight.dtype, "device": weight.device}
    linear = nn.utils.skip_init(nn.Linear, in_features, out_features, bias is not None, **like)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias)
    return linear


class LoSparseLinear(nn.Module):
    """``y = u(vt(x)) + S x``, S stored as its kept rows ``sparse`` and their indices ``rows``."""

    def __init__(self, u, vt, sparse, rows: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.in_features, self.out_features = vt.shape[1], u.shape[0]
        self.vt, self.u = _linear(vt), _linear(u, bias)
        self.sparse = nn.Parameter(sparse.detach().clone())
        self.register_buffer("rows", rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.u(self.vt(x)).index_add(-1, self.rows, F.linear(x, self.sparse))

    @torch.no_grad()
    def zero_rows(self, keep: torch.Tensor) -> None:
        self.sparse[~keep] = 0

    def kept(self, keep: torch.Tensor) -> LoSparseLinear:
        """The same layer storing only the rows of S in ``keep``."""
        bias = self.u.bias.detach() if self.u.bias is not None else None
        return LoSparseLinear(
            self.u.weight.detach(), self.vt.weight.detach(), self.sparse.detach()[keep],
            self.rows[keep], bias,
        )  # fmt: skip


def losparse_init(linear: nn.Linear, rank: int) -> LoSparseLinear:
    """U V from the rank-k SVD (√Σ on both factors, as the reference), S = W − U V, all rows."""
    W = linear.weight.detach()
    u, vt = truncated_svd(W, rank)
    residual = W.double() - u @ vt
    rows = torch.arange(W.shape[0], device=W.device)
    bias = linear.bias.detach() if linear.bias is not None else None
    like = {"dtype": W.dtype, "device": W.device}
    return LoSparseLinear(u.to(**like), vt.to(**like), residual.to(**like), rows, bias)


# ------------------------------------------------------------------------------- budget


def row_bits(layer: LoSparseLinear) -> int:
    """Storage of one kept row of S: its values and its index."""
    return layer.in_features * FP16_BITS + math.ceil(math.log2(max(2, layer.out_features)))


def rank_for_share(out_features: int, in_features: int, ratio: float, share: float) -> int:
    rank = int(share * (1 - ratio) * out_features * in_features // (out_features + in_features))
    if rank < 1:
        raise SpecError(
            f"losparse: rank_share={share} of {1 - ratio:.2f} of a {out_features}x{in_features} "
            "layer leaves no rank; use a larger rank_share or a smaller ratio"
        )
    return rank


def sparse_budget(layers: dict[str, LoSparseLinear], ratio: float) -> float:
    """Bits left for S rows over all layers once each layer's U V is stored."""
    total = 0.0
    for layer in layers.values():
        m, n, k = layer.out_features, layer.in_features, layer.u.weight.shape[1]
        total += FP16_BITS * ((1 - ratio) * m * n - k * (m + n))
    return total


def keep_rows(
    scores: dict[str, torch.Tensor], bits: dict[str, int], budget: float
) -> dict[str, torch.Tensor]:
    """Rows of S to keep: the most important over all layers while their bits fit ``budget``;
    ranked on the scores' device."""
    names = list(scores)
    flat = torch.cat([scores[name].float() for name in names])
    device = flat.device
    cost = torch.cat(
        [torch.full((len(scores[name]),), float(bits[name]), device=device) for name in names]
    )
    order = flat.argsort(descending=True, stable=True)
    kept_in_order = cost[order].cumsum(0) <= budget
    keep = torch.zeros(len(flat), dtype=torch.bool, device=device)
    keep[order[kept_in_order]] = True
    return dict(zip(names, keep.split([len(scores[name]) for name in names])))


def kept_fraction(step: int, steps: int, final: float) -> tuple[float, bool]:
    """(fraction of S's bits kept, whether to prune now) at ``step`` of 0 … steps − 1: the
    reference's cubic schedule between its initial and final warm-ups."""
    initial = max(1, round(INITIAL_WARMUP * steps))
    final_steps = max(1, round(FINAL_WARMUP * steps))
    if step >= steps - final_steps:
        return final, True
    if step < initial:
        return 1.0, False
    progress = (step - initial) / (steps - initial - final_steps)
    return final + (1 - final) * (1 - progress) ** 3, True


# -------------------------------------------------------------------------- sensitivity


class Sensitivity:
    """PLATON's smoothed sensitivity of one S, reduced to its rows: |S ⊙ ∇S| row means,
    averaged over each window of ``delta`` steps, then an EMA (β₁) across windows. The row
    mean commutes with both averages, so this equals the reference's row-mean of its
    per-entry scores. Kept on ``device``, S's."""

    def __init__(self, rows: int, beta1: float, delta: int, device: torch.device | str):
        self.window = torch.zeros(rows, dtype=torch.float64, device=device)
        self.smoothed = torch.zeros(rows, dtype=torch.float64, device=device)
        self.beta1, self.delta = beta1, delta

    def update(self, step: int, S: torch.Tensor) -> None:
        current = (S.detach() * S.grad).abs().mean(dim=1).double()
        local = step % self.delta
        if local == 0:
            self.smoothed = self.beta1 * self.smoothed + (1 - self.beta1) * self.window
            self.window = current
        else:
            self.window = (self.window * local + current) / (local + 1)


def lm_loss(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    ids = ids.to(next(model.parameters()).device)
    return model(ids, labels=ids, use_cache=False).loss


def one_shot_scores(model, layers, windows, batch) -> dict[str, torch.Tensor]:
    """Mean |S ⊙ ∇S| per row over the calibration windows, no weight updated (``steps=0``)."""
    scores = {
        name: torch.zeros(layer.out_features, dtype=torch.float64, device=layer.sparse.device)
        for name, layer in layers.items()
    }
    count = math.ceil(len(windows) / batch)
    with training_only(model, [layer.sparse for layer in layers.values()]):
        for step in range(count):
            lm_loss(model, batches(windows, batch, step)).backward()
            for name, layer in layers.items():
                S = layer.sparse
                scores[name] += (S.detach() * S.grad).abs().mean(dim=1).double() / count
                S.grad = None
    return scores


def train_and_prune(model, layers, windows, settings, budget: float) -> dict[str, torch.Tensor]:
    """The reference's loop: AdamW step, sensitivity update, scheduled pruning of S rows."""
    steps, bits = settings["steps"], {name: row_bits(layer) for name, layer in layers.items()}
    every_row = sum(layer.out_features * bits[name] for name, layer in layers.items())
    params = [param for layer in layers.values() for param in layer.parameters()]
    sensitivity = {
        name: Sensitivity(
            layer.out_features, settings["beta1"], settings["deltaT"], layer.sparse.device
        )
        for name, layer in layers.items()
    }
    keep = {}
    with training_only(model, params):
        optimizer = torch.optim.AdamW(params, lr=settings["lr"], weight_decay=0.0)
        warmup = math.ceil(LR_WARMUP * steps)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: step / warmup if step < warmup else (steps - step) / (steps - warmup),
        )
        for step in range(steps):
            lm_loss(model, batches(windows, settings["batch"], step)).backward()
            optimizer.step()
            for name, layer in layers.items():
                sensitivity[name].update(step, layer.sparse)
            fraction, prune = kept_fraction(step, steps, budget / every_row)
            if prune:
                scores = {name: s.smoothed for name, s in sensitivity.items()}
                keep = keep_rows(scores, bits, fraction * every_row)
                for name, layer in layers.items():
                    layer.zero_rows(keep[name].to(layer.rows.device))
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
    return keep


def replace_linears(model: nn.Module, ratio: float, share: float) -> dict[str, LoSparseLinear]:
    """Every block linear becomes a LoSparse layer with all rows of S; keyed by full name."""
    layers = {}
    for site, linear in block_linears(model):
        rank = rank_for_share(*linear.weight.shape, ratio, share)
        layer = losparse_init(linear, rank)
        replace_module(model, site.path, layer)
        layers[site.path] = layer
    return layers


def install_kept(model: nn.Module, layers, keep) -> dict[str, TensorStorage]:
    """Replace each layer by its compact form and say how its tensors are stored."""
    storage = {}
    for name, layer in layers.items():
        compact = layer.kept(keep[name].to(layer.rows.device))
        replace_module(model, name, compact)
        index_bits = len(compact.rows) * (row_bits(compact) - compact.in_features * FP16_BITS)
        storage |= {
            f"{name}.u.weight": TensorStorage(),
            f"{name}.vt.weight": TensorStorage(),
            f"{name}.sparse": TensorStorage(extra_bits=index_bits),
        }
    return storage


@register(
    "losparse",
    family="lowrank",
    levels={"ratio"},
    needs_calibration=True,
    options={
        "steps": Option(_steps, 16, "training steps; 0: SVD init, S pruned once by sensitivity"),
        "batch": Option(positive_int, 1, "calibration windows per step"),
        "lr": Option(positive_float, 9e-5, "AdamW learning rate (the MNLI command's)"),
        "rank_share": Option(FRACTION, 0.25, "share of the kept budget held by U V"),
        "beta1": Option(FRACTION, 0.85, "EMA of the sensitivity (the reference's beta1)"),
        "deltaT": Option(positive_int, 1, "steps per sensitivity window and pruning interval"),
        "nsamples": Option(positive_int, 16, "calibration windows"),
    },
)
def losparse(model, stage, settings, calibration) -> dict[str, TensorStorage]:
    check_ratio(stage.ratio, "losparse")
    if stage.ratio == 0:
        return {}
    windows = calibration.windows(settings)
    with in_fp32(model):
        with torch.no_grad():
            layers = replace_linears(model, stage.ratio, settings["rank_share"])
        budget = sparse_budget(layers, stage.ratio)
        if settings["steps"] == 0:
            scores = one_shot_scores(model, layers, windows, settings["batch"])
            bits = {name: row_bits(layer) for name, layer in layers.items()}
            keep = keep_rows(scores, bits, budget)
        else:
            keep = train_and_prune(model, layers, windows, settings, budget)
        with torch.no_grad():
            return install_kept(model, layers, keep)
