"""BESA: Blockwise Parameter-Efficient Sparsity Allocation (Xu, Shao, Chen et al.,
"BESA: Pruning Large Language Models with Blockwise Parameter-Efficient Sparsity
Allocation", ICLR 2024, arXiv:2402.16880).

Block by block, each linear learns how much to prune instead of taking a fixed ratio.
Its weights are sorted by importance (Wanda's score, per row); a learnable softmax
distribution p over candidate sparsities c_k = 1, 0.99, …, 0 gives an expected
sparsity s = Σ_k p_k c_k per row (``alloc=row``) or per layer (``alloc=layer``). The
forward pass uses the hard mask that prunes the lowest int(s · columns) weights of each
row, the backward pass the differentiable keep-probability of each sorted position,
1 − Σ_k p_k [position < c_k · columns] (straight-through). The loss is the block's
normalised reconstruction error plus β · ((ŝ − R) / R)², ŝ the parameter-weighted mean
sparsity of the block; the distributions are trained with Prodigy, and the final mask
is the hard mask at the learned sparsities.

Mapping to the authors' code (OpenGVLab/LLMPrune-BESA ``models/sparse_layers.py``,
``main.py`` and the commands of ``main_exps.sh``): ``SparseLinear`` with
``metric_type=Wanda``, ``sparsity_step=0.01``, sigmoid smoothing (softmax of sigmoid of
the logits), ``blocksize=1`` for row-wise allocation, one distribution per layer for
layer-wise (trained against the dense model's block outputs, ``--prune-dense``, as
their layer-wise commands; row-wise against the dense block on the pruned inputs), the
per-batch ``l2_scaler``, ``l2_alpha=1``, ``sparsity_beta=5``, ``epochs=1``, batches of one
sample, Prodigy with lr 1 and ``d_coef=5``. fp32 on the CPU (they use fp16 autocast).

Sigmoid smoothing bounds the ratio of any two probabilities by e, so the expected
sparsity cannot exceed ``max_expected_sparsity`` (0.624 for step 0.01): a higher target
needs ``sigmoid=false``. N:M is not a BESA level: with M fixed there is nothing to
allocate (their N:M path is plain Wanda N:M).

Keeps its own block loop: each block's sparsity allocation is learned against its outputs.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.func import functional_call

from mpt_core.engine.layerwise import (
    LayerInputs,
    _fit_batch,
    collect_stats,
    iterate_blocks,
    linear_layers,
    run_block,
    weight_name,
)
from mpt_core.engine.signals import InputNormStats, wanda_score
from mpt_core.errors import SpecError
from mpt_core.registry import Option, flag, one_of, positive_float, positive_int, register
from mpt_core.storage import TensorStorage

ALLOCATIONS = ("row", "layer")


def sparsity_candidates(step: float, device: torch.device | str) -> torch.Tensor:
    """c_k = 1, 1 − step, …, 0 (the reference's ``arange`` with its last value forced to 0),
    on ``device``: the weights' for training, ``"cpu"`` for the bound of a spec."""
    candidates = torch.arange(1.0, -1 * step, -1 * step, device=device, dtype=torch.float32)
    candidates[-1] = 0.0
    return candidates


def max_expected_sparsity(candidates: torch.Tensor) -> float:
    """The largest Σ p_k c_k a sigmoid-smoothed softmax reaches: weight e on the top
    candidates, 1 on the rest (sigmoid ∈ (0, 1)), at the best split. A check of the spec,
    not the method's arithmetic: it sums in float64, where ``candidates`` are."""
    top_first = candidates.sort(descending=True).values.double()
    like = dict(device=candidates.device, dtype=candidates.dtype)
    best = 0.0
    for split in range(len(top_first) + 1):
        weights = torch.cat(
            [torch.full((split,), math.e, **like), torch.ones(len(top_first) - split, **like)]
        )
        best = max(best, float((weights * top_first).sum() / weights.sum()))
    return best


class Prodigy(torch.optim.Optimizer):
    """Prodigy (Mishchenko & Defazio, arXiv:2306.06101), Adam with the step size D
    estimated on the fly: the optimizer BESA's code ships (``optimizers/prodigy.py``),
    at the settings BESA uses (no weight decay, no bias correction, no warm-up safeguard)."""

    def __init__(self, params, lr=1.0, betas=(0.9, 0.999), eps=1e-8, d0=1e-6, d_coef=1.0):
        defaults = dict(lr=lr, betas=betas, eps=eps, d=d0, d0=d0, d_max=d0, d_numerator=0.0)
        super().__init__(params, defaults | {"d_coef": d_coef})

    @torch.no_grad()
    def step(self, closure=None):
        group = self.param_groups[0]
        beta1, beta2 = group["betas"]
        beta3 = math.sqrt(beta2)
        d, d0, lr = group["d"], group["d0"], group["lr"]
        dlr = d * lr
        d_numerator = group["d_numerator"] * beta3
        d_denom = 0.0
        params = [p for p in group["params"] if p.grad is not None]
        for p in params:
            state = self.state[p]
            if not state:
                state["s"], state["p0"] = torch.zeros_like(p), p.detach().clone()
                state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
            grad = p.grad
            d_numerator += (d / d0) * dlr * torch.dot(grad.flatten(), (state["p0"] - p).flatten())
            state["exp_avg"].mul_(beta1).add_(grad, alpha=d * (1 - beta1))
            state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=d * d * (1 - beta2))
            state["s"].mul_(beta3).add_(grad, alpha=(d / d0) * dlr)
            d_denom += float(state["s"].abs().sum())
        if d_denom == 0:
            return None
        d_numerator = float(d_numerator)
        d_hat = group["d_coef"] * d_numerator / d_denom
        # growth_rate=inf in the reference: D jumps to the largest estimate so far
        group["d_max"] = max(group["d_max"], d_hat)
        group.update(d=group["d_max"], d_numerator=d_numerator)
        for p in params:
            state = self.state[p]
            denom = state["exp_avg_sq"].sqrt().add_(group["d"] * group["eps"])
            p.addcdiv_(state["exp_avg"], denom, value=-dlr)
        return None


class SparsityAllocation(nn.Module):
    """One linear's learnable sparsity: logits over the candidates, per row or per layer,
    and the masks they define on the weights sorted by Wanda's score. Everything lives on
    the device of ``score`` (the weights'), where ``candidates`` must be too."""

    def __init__(self, score: torch.Tensor, candidates: torch.Tensor, alloc: str, sigmoid: bool):
        super().__init__()
        rows, columns = score.shape
        self.columns, self.alloc, self.sigmoid = columns, alloc, sigmoid
        self.candidates = candidates
        like = dict(device=score.device, dtype=torch.float32)
        shape = (rows if alloc == "row" else 1, len(candidates))
        self.logits = nn.Parameter(torch.zeros(shape, **like))
        self.sort_indices = torch.argsort(score, dim=1, stable=True)
        # prob_map[k, position] = 1 where candidate c_k prunes that sorted position
        self.prob_map = torch.zeros(len(candidates), columns, **like)
        for k, c in enumerate(candidates.tolist()):
            self.prob_map[k, : int(columns * c)] = 1

    def probabilities(self) -> torch.Tensor:
        logits = self.logits.sigmoid() if self.sigmoid else self.logits
        return logits.softmax(dim=-1)

    def sparsities(self) -> torch.Tensor:
        """s per row (or the one of the layer): Σ_k p_k c_k."""
        return self.probabilities() @ self.candidates

    def hard_mask(self) -> torch.Tensor:
        """1 where kept: the lowest int(s · columns) of each row pruned."""
        prune = (self.sparsities() * self.columns).long().expand(len(self.sort_indices))
        columns = torch.arange(self.columns, device=self.sort_indices.device)
        kept_sorted = columns >= prune.unsqueeze(1)
        return self._unsort(kept_sorted.float())

    def keep_probability(self) -> torch.Tensor:
        """1 − Σ_k p_k [sorted position pruned by c_k], differentiable in the logits."""
        sorted_keep = 1 - self.probabilities() @ self.prob_map
        return self._unsort(sorted_keep.expand(len(self.sort_indices), -1))

    def mask(self) -> torch.Tensor:
        """The hard mask forward, the keep-probability's gradient backward."""
        P = self.keep_probability()
        return self.hard_mask() - P.detach() + P

    def _unsort(self, sorted_values: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(sorted_values).scatter(1, self.sort_indices, sorted_values)


def block_sparsity(allocations: dict[str, SparsityAllocation], numels: dict[str, int]):
    """ŝ: the parameter-weighted mean of the layers' expected sparsities."""
    total = sum(numels.values())
    return sum(a.sparsities().mean() * numels[name] / total for name, a in allocations.items())


def reconstruction_loss(reference: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """Σ ((Y − Ŷ) / ‖Y_:,c‖)² / hidden: the error scaled by each channel's norm over tokens."""
    l2_scaler = torch.norm(reference.reshape(-1, reference.shape[-1]).t(), p=2, dim=1)
    return (((reference - output) / l2_scaler) ** 2).sum() / output.shape[-1]


def masked_forward(block, linears, allocations, hidden, kwargs) -> torch.Tensor:
    # the mask is fp32 (its logits train in fp32); the product takes the block's dtype
    weights = {
        f"{name}.weight": (linears[name].weight.detach() * a.mask()).to(linears[name].weight.dtype)
        for name, a in allocations.items()
    }
    out = functional_call(block, weights, (hidden,), _fit_batch(kwargs, hidden.shape[0]))
    return out[0] if isinstance(out, tuple) else out


def learn_block(
    index: int, block, inputs: LayerInputs, reference: torch.Tensor, stage, settings
) -> None:
    """Train the block's sparsity allocation, then prune it at the learned sparsities."""
    linears = linear_layers(block)
    stats = collect_stats(block, inputs, lambda _site, linear: InputNormStats(linear), index)
    candidates = sparsity_candidates(settings["step"], next(iter(linears.values())).weight.device)
    allocations = {
        name: SparsityAllocation(
            wanda_score(linear.weight, stats[name].scaler_row),
            candidates,
            settings["alloc"],
            settings["sigmoid"],
        )
        for name, linear in linears.items()
    }
    numels = {name: linear.weight.numel() for name, linear in linears.items()}
    params = [a.logits for a in allocations.values()]
    optimizer = Prodigy(params, d_coef=settings["d_coef"])
    target, beta = stage.ratio, settings["beta"]
    for _epoch in range(settings["epochs"]):
        for sample in range(len(inputs.hidden)):
            hidden = inputs.hidden[sample : sample + 1]
            with torch.enable_grad():
                output = masked_forward(block, linears, allocations, hidden, inputs.kwargs)
                l2 = reconstruction_loss(reference[sample : sample + 1], output)
                penalty = ((block_sparsity(allocations, numels) - target) / target) ** 2
                loss = l2 + beta * penalty
                optimizer.zero_grad()
                loss.backward()
            optimizer.step()
    with torch.no_grad():
        for name, allocation in allocations.items():
            linears[name].weight.mul_(allocation.hard_mask())


def check_reachable(stage, settings) -> None:
    if not settings["sigmoid"]:
        return
    bound = max_expected_sparsity(sparsity_candidates(settings["step"], "cpu"))
    if stage.ratio > bound:
        raise SpecError(
            f"{stage}: with sigmoid smoothing BESA's expected sparsity is at most {bound:.3f}; "
            "use [sigmoid=false] for a higher ratio"
        )


@register(
    "besa",
    family="unstructured",
    levels={"ratio"},
    needs_calibration=True,
    check=check_reachable,
    options={
        "alloc": Option(one_of(ALLOCATIONS), "row", "sparsity learned per row or per layer"),
        "epochs": Option(positive_int, 1, "passes over the calibration samples per block"),
        "step": Option(positive_float, 0.01, "spacing of the candidate sparsities"),
        "beta": Option(positive_float, 5.0, "weight of the target-sparsity penalty"),
        "d_coef": Option(positive_float, 5.0, "Prodigy's step-size coefficient"),
        "sigmoid": Option(flag, True, "softmax over sigmoid of the logits (the reference's)"),
    },
)
def besa(model, stage, settings, calibration) -> dict[str, TensorStorage]:
    if stage.ratio == 0:
        raise SpecError(f"{stage}: BESA needs a target sparsity above 0")
    windows = calibration.windows(settings)
    dense_inputs = None
    storage = {}
    for index, block, inputs in iterate_blocks(model, windows):
        if settings["alloc"] == "layer":
            # the dense model's own block outputs, as their layer-wise runs (--prune-dense)
            reference = run_block(block, dense_inputs or inputs)
            dense_inputs = LayerInputs(reference, inputs.kwargs)
        else:
            reference = run_block(block, inputs)  # the dense block on the pruned inputs
        learn_block(index, block, inputs, reference, stage, settings)
        for name in linear_layers(block):
            storage[weight_name(index, name)] = TensorStorage()
    return storage
