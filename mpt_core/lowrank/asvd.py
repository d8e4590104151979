"""ASVD: activation-aware singular value decomposition (Yuan et al., 2023, arXiv:2312.05821).

Input channels with large activations matter more to a layer's output than their
weights show, so ASVD scales the columns of W by s = (mean |X|)^α before the SVD and
folds 1/s back into Vᵀ afterwards: W ≈ U_k Σ_k (V_kᵀ diag(1/s)). The ranks are not
uniform: the per-layer sensitivity search measures the calibration perplexity of the
model with one layer at a time factorized to each kept-parameter ratio in
{0.4, …, 0.9}, sorts all (layer, ratio) pairs from most to least harmful, and binary
searches the cut such that every layer takes the smallest ratio among its pairs below
the cut and the kept parameters meet the budget.

As the authors' code (``act_aware_utils.calib_input_distribution`` with
``scaling_method=abs_mean``, ``alpha=0.5``; ``sensitivity.calib_sensitivity_ppl``;
``binary_search.binary_search_truncation_rank``; ``SVDLinear.from_linear``, rank =
⌊⌊p·m·n⌋ / (m + n)⌋, Σ split as √Σ on both factors): scales and sensitivities come
from the dense model. Differences: the exact SVD instead of their randomized
``torch.svd_lowrank`` (which approximates it); the search covers the decoder blocks'
linears only (theirs also the LM head); their search ends on the cut it last probed,
which can miss the budget by one pair, ours takes the last cut that meets it.
``R`` is the fraction of block-linear parameters removed; the candidates keep at least
40% of every layer, so R ≤ 0.6.

Precision and devices: the activation scales are summed in float32 on the weights' device,
as their forward hook sums them there. The SVD is float64 here; the authors' is float32
(``linear.weight.data.float()`` into ``torch.svd_lowrank``): ours is exact where theirs is
randomized, and float64 keeps the results recorded so far.

The sensitivity costs one partial forward pass per (layer, ratio): 6·7·L passes over
the calibration windows (1,260 for a 30-block model), so ``nsamples`` defaults to 8. It
does not depend on R, so, as the authors cache it to disk, it is computed once per
(weights, calibration windows, α) and reused by every ratio of a session, and stored under
``$MPT_CACHE_DIR/stats`` for later sessions (``engine.stats_cache``; the key also holds the
device kind, the torch version and ``STATISTICS_VERSION``). ``MPT_STATS_CACHE=0`` turns
the disk copy off.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from mpt_core.engine import stats_cache
from mpt_core.engine.layerwise import (
    LinearSite,
    block_linears,
    collect_stats,
    decoder_layers,
    iterate_blocks,
)
from mpt_core.engine.modules import replace_module
from mpt_core.engine.signals import inputs_of_alive_blocks, loss_from
from mpt_core.errors import SpecError
from mpt_core.lowrank.factorized import check_ratio, replace_linear, split_sigma
from mpt_core.models import state_dict_hash
from mpt_core.registry import Option, float_in, positive_int, register
from mpt_core.storage import TensorStorage

PARAM_RATIO_CANDIDATES = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


class AbsMean:
    """Σ over calibration windows of mean_t |x_t|, per input channel (ASVD's ``abs_mean``),
    kept on ``device`` (the weights'), where the activations are."""

    def __init__(self, in_features: int, device: torch.device | str):
        self.scale = torch.zeros(in_features, dtype=torch.float32, device=device)

    def add_batch(self, inp: torch.Tensor, out: torch.Tensor) -> None:
        self.scale += inp.abs().float().mean(dim=-2).reshape(-1, inp.shape[-1]).sum(0)


@torch.no_grad()
def activation_scales(model, windows: torch.Tensor) -> dict[tuple[int, str], torch.Tensor]:
    """mean |X| of every block linear's input, through the dense model."""
    scales = {}
    for index, block, inputs in iterate_blocks(model, windows, propagate="dense"):
        stats = collect_stats(
            block,
            inputs,
            lambda _site, linear: AbsMean(linear.in_features, linear.weight.device),
            index,
        )
        scales |= {(index, name): stat.scale for name, stat in stats.items()}
    return scales


def asvd_rank(linear: nn.Linear, param_ratio: float) -> int:
    return int(linear.weight.numel() * param_ratio) // (linear.in_features + linear.out_features)


def asvd_factors(
    W: torch.Tensor, scale: torch.Tensor, alpha: float, rank: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(U_k√Σ_k, √Σ_k V_kᵀ diag(1/s)) of W·diag(s), s = scale^α + 1e-6, in float64 (the
    authors: float32; see the module's docstring)."""
    s = scale.double().to(W.device) ** alpha + 1e-6
    U, S, Vt = torch.linalg.svd(W.double() * s, full_matrices=False)
    u, vt = split_sigma(U, S, Vt, rank)
    return u, vt / s


@torch.no_grad()
def sensitivity(model, windows, scales, alpha) -> list[tuple[tuple[int, str], float, float]]:
    """(layer, kept ratio, calibration loss with that layer alone factorized) for all pairs."""
    blocks = decoder_layers(model)
    entering = inputs_of_alive_blocks(model, list(range(len(blocks))), windows)
    pairs = []
    for site, linear in block_linears(model):
        tail = list(blocks[site.index :])
        for ratio in PARAM_RATIO_CANDIDATES:
            rank = asvd_rank(linear, ratio)
            u, vt = asvd_factors(linear.weight, scales[site.index, site.name], alpha, rank)
            replace_linear(model, site, u, vt)
            loss = loss_from(model, tail, entering[site.index], windows)
            pairs.append(((site.index, site.name), ratio, loss))
            replace_module(model, site.path, linear)
    return pairs


def search_ratios(
    pairs: list[tuple[tuple[int, str], float, float]], numel: dict, target: float
) -> dict[tuple[int, str], float]:
    """Kept ratio per layer: the cut in the pairs (most harmful first) whose tail, each
    layer at its smallest ratio there, keeps the most parameters within ``target``."""
    ordered = sorted(pairs, key=lambda pair: -pair[2])
    total = sum(numel.values())

    def ratios_from(cut: int) -> dict:
        ratios = dict.fromkeys(numel, 1.0)
        for layer, ratio, _ in ordered[cut:]:
            ratios[layer] = min(ratios[layer], ratio)
        return ratios

    def kept(cut: int) -> float:
        return sum(numel[layer] * ratio for layer, ratio in ratios_from(cut).items()) / total

    if kept(0) > target:
        raise SpecError(f"asvd keeps at least {kept(0):.2f} of the parameters; use R <= 0.6")
    low, high = 0, len(ordered)  # kept(low) <= target; kept() grows with the cut
    while low < high:
        mid = (low + high + 1) // 2
        if kept(mid) <= target:
            low = mid
        else:
            high = mid - 1
    return ratios_from(low)


STATISTICS_VERSION = 1  # bump when activation_scales or sensitivity compute differently

_STATISTICS: dict[str, tuple[dict, list]] = {}  # one entry: the model a session restores


def dense_statistics(model, windows: torch.Tensor, alpha: float) -> tuple[dict, list]:
    """(activation scales, sensitivity pairs) of ``model``, computed once per key: kept in
    memory for the session and on disk for later ones (``engine.stats_cache``)."""
    key = statistics_key(model, windows, alpha)
    if key not in _STATISTICS:
        _STATISTICS.clear()
        statistics = stats_cache.load("asvd", key, lambda stored: decoded(stored, model))
        if statistics is None:
            scales = activation_scales(model, windows)
            statistics = (scales, sensitivity(model, windows, scales, alpha))
            stats_cache.store("asvd", key, encoded(*statistics))
        _STATISTICS[key] = statistics
    return _STATISTICS[key]


def statistics_key(model, windows: torch.Tensor, alpha: float) -> str:
    """A digest of what the statistics depend on: every weight of the model as it is now
    (the whole state dict: the tail loss passes the norms and the LM head), the calibration
    windows with their shape, α, the device kind and torch version that compute them, and
    ``STATISTICS_VERSION``."""
    device = next(model.parameters()).device.type
    digest = hashlib.sha256(
        f"asvd v{STATISTICS_VERSION}|alpha={alpha!r}|{device}|torch {torch.__version__}|"
        f"windows {windows.dtype}{tuple(windows.shape)}|".encode()
    )
    digest.update(windows.cpu().contiguous().numpy().tobytes())
    digest.update(state_dict_hash(model).encode())
    return digest.hexdigest()


def encoded(scales: dict, pairs: list) -> dict:
    """The statistics as ``torch.load(weights_only=True)`` reads them: CPU tensors, lists."""
    return {
        "scales": [[index, name, scale.cpu()] for (index, name), scale in scales.items()],
        "pairs": [[index, name, ratio, loss] for (index, name), ratio, loss in pairs],
    }


def decoded(stored: dict, model) -> tuple[dict, list]:
    """``encoded``'s inverse, each scale on its layer's device; ValueError unless it covers
    every block linear of ``model`` at every candidate ratio."""
    devices = {
        (site.index, site.name): linear.weight.device for site, linear in block_linears(model)
    }
    scales = {
        (index, name): scale.to(devices[index, name]) for index, name, scale in stored["scales"]
    }
    pairs = [((index, name), ratio, loss) for index, name, ratio, loss in stored["pairs"]]
    if scales.keys() != devices.keys() or len(pairs) != len(devices) * len(PARAM_RATIO_CANDIDATES):
        raise ValueError("the stored statistics do not cover this model's block linears")
    return scales, pairs


@register(
    "asvd",
    family="lowrank",
    levels={"ratio"},
    needs_calibration=True,
    options={
        "alpha": Option(
            float_in(0, 2, what="the scaling exponent"), 0.5, "exponent of the activation scaling"
        ),
        "nsamples": Option(positive_int, 8, "calibration windows (sensitivity search)"),
    },
)
@torch.no_grad()
def asvd(model, stage, settings, calibration) -> dict[str, TensorStorage]:
    check_ratio(stage.ratio, "asvd", highest=0.6)
    if stage.ratio == 0:
        return {}
    windows = calibration.windows(settings)
    alpha = settings["alpha"]
    scales, pairs = dense_statistics(model, windows, alpha)
    numel = {
        (site.index, site.name): linear.weight.numel() for site, linear in block_linears(model)
    }
    ratios = search_ratios(pairs, numel, 1 - stage.ratio)
    storage: dict[str, TensorStorage] = {}
    for (index, name), ratio in ratios.items():
        if ratio == 1.0:
            continue
        site = LinearSite(index, name)
        linear = model.get_submodule(site.path)
        u, vt = asvd_factors(linear.weight, scales[index, name], alpha, asvd_rank(linear, ratio))
        storage |= replace_linear(model, site, u, vt)
    return storage
