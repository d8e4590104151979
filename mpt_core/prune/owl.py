"""OWL: outlier weighed layerwise sparsity (Yin et al., "Outlier Weighed Layerwise
Sparsity (OWL): A Missing Secret Sauce for Pruning LLMs to High Sparsity", ICML 2024,
arXiv:2310.05175).

A decoder layer with more outliers keeps more weights. The layer's outlier ratio
(LOD) is the share of its Wanda scores |W|·‖X‖ above M times their mean, over all the
linear layers of the block on the dense model. The LODs are mapped linearly onto
densities spanning 2λ and shifted so that their mean is 1 - R; layer l is then pruned
to 1 - density_l by the base method (Wanda or SparseGPT) as usual.

Mapping to the authors' code (luuyin/OWL, ``lib/prune_all.py::prune_wanda_outlier`` and
``prune_sparsegpt_outlier``): ``check_outlier_mean`` is ``layer_outlier_ratio``, the
``Lamda * 2`` rescaling and shift are ``owl_sparsities`` (a layer at or below zero gets
0.01, as theirs, which then lifts the mean above R; that needs R < 2λ). Defaults are
their LLaMA settings: M = 5 (``--Hyper_m 5``), λ = 0.08. OWL is unstructured only:
their N:M branch ignores the layer ratios.

Imports wanda and sparsegpt: OWL's algorithm runs its base method layer by layer by design.
"""

from __future__ import annotations

import dataclasses

import torch

from mpt_core import registry
from mpt_core.engine.layerwise import (
    collect_stats,
    compress_layerwise,
    iterate_blocks,
    linear_layers,
)
from mpt_core.engine.signals import HessianStats, InputNormStats, wanda_score
from mpt_core.prune import sparsegpt, wanda
from mpt_core.registry import Option, float_in, one_of, positive_float, register
from mpt_core.storage import TensorStorage

BASES = {
    "wanda": (InputNormStats, wanda.prune_linear),
    "sparsegpt": (HessianStats, sparsegpt.prune_linear),
}
MIN_SPARSITY = 0.01  # the reference's floor for a layer mapped to no sparsity


def layer_outlier_ratio(scores: list[torch.Tensor], M: float) -> float:
    """Percent of the block's scores above M times their mean (``check_outlier_mean``)."""
    flat = torch.cat([score.flatten() for score in scores])
    return 100 * (flat > torch.mean(flat) * M).sum().item() / flat.numel()


def owl_sparsities(lod: list[float], R: float, lam: float) -> list[float]:
    """Per-layer sparsity: LOD rescaled to [0, 2λ], centred on density 1 - R; one number a
    layer, on the host in float64 as the reference's numpy arrays."""
    lod_t = torch.tensor(lod, dtype=torch.float64, device="cpu")
    spread = lod_t.max() - lod_t.min()
    if spread == 0:  # no layer stands out: OWL reduces to the uniform ratio
        return [R] * len(lod)
    density = (lod_t - lod_t.min()) / spread * lam * 2
    density = density - density.mean() + (1 - R)
    return [max(1 - d, MIN_SPARSITY) for d in density.tolist()]


@torch.no_grad()
def outlier_ratios(model, windows: torch.Tensor, M: float) -> list[float]:
    """LOD of every decoder layer of the dense model (nothing is pruned in this pass)."""
    ratios = []
    for index, block, inputs in iterate_blocks(model, windows):
        stats = collect_stats(block, inputs, lambda _site, linear: InputNormStats(linear), index)
        scores = [
            wanda_score(linear.weight.data, stats[name].scaler_row)
            for name, linear in linear_layers(block).items()
        ]
        ratios.append(layer_outlier_ratio(scores, M))
    return ratios


def prune_with_sparsities(model, windows, stage, base: str, sparsities: list[float]) -> dict:
    """The base method, layer by layer, each decoder layer at its own ratio."""
    make_stats, prune_linear = BASES[base]
    base_stage = dataclasses.replace(stage, method=base, options=())
    base_settings = registry.get(base).settings(base_stage)
    layer_stages = [dataclasses.replace(base_stage, ratio=ratio) for ratio in sparsities]
    return compress_layerwise(
        model,
        windows,
        lambda _site, linear: make_stats(linear),
        lambda site, linear, stats: prune_linear(
            linear, stats, layer_stages[site.index], base_settings
        ),
    )


@register(
    "owl",
    family="unstructured",
    levels={"ratio"},
    needs_calibration=True,
    options={
        "base": Option(
            one_of(tuple(BASES), "base"),
            "wanda",
            "method that prunes each layer: wanda or sparsegpt",
        ),
        "m": Option(positive_float, 5.0, "outlier threshold M, a multiple of the mean score"),
        "lam": Option(float_in(0, 0.5, what="λ"), 0.08, "λ: the layer sparsities span 2λ"),
    },
)
def owl(model, stage, settings, calibration) -> dict[str, TensorStorage]:
    windows = calibration.windows(settings)
    lod = outlier_ratios(model, windows, settings["m"])
    sparsities = owl_sparsities(lod, stage.ratio, settings["lam"])
    return prune_with_sparsities(model, windows, stage, settings["base"], sparsities)
