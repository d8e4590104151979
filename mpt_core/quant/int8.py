"""LLM.int8(): 8-bit matrix multiplication for transformers at scale
(Dettmers, Lewis, Belkada, Zettlemoyer; NeurIPS 2022, arXiv:2208.07339).

Vector-wise quantization: each output row of W has its own absmax scale, each token
of X its own; the product is dequantized by the outer product of both scales.
Mixed-precision decomposition: the input feature columns in which any value reaches
|x| ≥ ``threshold`` (6.0) are taken out of the int8 product and multiplied in 16-bit,
X_f16·W_f16ᵀ + S·(X_i8·W_i8ᵀ), the paper's Eq. 7. The outlier columns are found per
call, as bitsandbytes' ``int8_vectorwise_quant`` finds them.

The 16-bit weight columns exist only for the outlier dimensions, which are
systematic (the paper's §4): mpt finds them on the calibration windows and keeps
those columns of W in 16 bits; a column that turns out an outlier only at run time
multiplies its 16-bit activations with its int8 weights dequantized, as
bitsandbytes does for every outlier column.

Storage: int8 for every weight (the int8 matrix is kept whole, as bitsandbytes
keeps ``CB``), an fp32 absmax per row (``SCB``), and per stored outlier column its
16-bit weights and an int32 column index.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mpt_core.engine.layerwise import block_linears
from mpt_core.engine.modules import replace_module
from mpt_core.quant import backends
from mpt_core.quant.activations import input_absmax
from mpt_core.registry import Option, positive_float, register
from mpt_core.storage import TensorStorage

THRESHOLD = 6.0
Q_MAX = 127
ROW_SCALE_BITS = 32
OUTLIER_VALUE_BITS = 16
COLUMN_INDEX_BITS = 32


def vectorwise_int8(x: torch.Tensor) -> torch.Tensor:
    """Per-row absmax int8 round trip (bitsandbytes' ``int8_vectorwise_quant`` formula)."""
    row_stats = x.abs().amax(dim=-1, keepdim=True).float()
    codes = torch.round(x * (Q_MAX / row_stats)).clamp(-Q_MAX, Q_MAX)
    return (codes * (row_stats / Q_MAX)).nan_to_num(0.0).to(x.dtype)


def outlier_columns(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """Indices of the input features where any token has |x| ≥ threshold."""
    flat = x.reshape(-1, x.shape[-1])
    return torch.nonzero((flat.abs() >= threshold).any(dim=0)).flatten()


class OutlierColumns(nn.Module):
    """The 16-bit side of the decomposition: the threshold, and the weights that multiply
    the 16-bit activations (16-bit where stored, int8 dequantized elsewhere). The buffer is
    not persistent: its cost is counted in the footprint, not as a parameter."""

    def __init__(self, weight: torch.Tensor, threshold: float):
        super().__init__()
        self.threshold = threshold
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, x: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        return x[..., cols] @ self.weight[:, cols].t()

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}"


class Int8Linear(nn.Linear):
    """LLM.int8() forward: int8 vector-wise product plus the 16-bit outlier product.

    ``weight`` holds the int8 weights dequantized; the child ``outliers`` the 16-bit
    side, so the module tree shows the change and ``Snapshot`` rebuilds it on restore."""

    @classmethod
    def wrap(
        cls,
        linear: nn.Linear,
        stored_columns: torch.Tensor,
        threshold: float,
        quantize_rows: Callable[[torch.Tensor], torch.Tensor],
    ) -> Int8Linear:
        new = cls(linear.in_features, linear.out_features, bias=False, device="meta")
        int8_weight = quantize_rows(linear.weight.detach().float()).to(linear.weight.dtype)
        outlier_weight = int8_weight.clone()
        outlier_weight[:, stored_columns] = linear.weight.detach()[:, stored_columns]
        new.outliers = OutlierColumns(outlier_weight, threshold)
        new.weight = linear.weight
        new.bias = linear.bias
        with torch.no_grad():
            new.weight.copy_(int8_weight)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cols = outlier_columns(x, self.outliers.threshold)
        inliers = x.clone()
        inliers[..., cols] = 0
        out = nn.functional.linear(vectorwise_int8(inliers), self.weight, self.bias)
        if cols.numel():
            out = out + self.outliers(x, cols)
        return out


def int8_storage(linear: nn.Linear, stored_columns: int) -> TensorStorage:
    rows = linear.out_features
    return TensorStorage(
        value_bits=8,
        group_size=linear.in_features,
        scale_bits=ROW_SCALE_BITS,
        extra_bits=stored_columns * (rows * OUTLIER_VALUE_BITS + COLUMN_INDEX_BITS),
    )


@torch.no_grad()
def apply_int8(
    model, settings: dict, calibration, quantize_rows=vectorwise_int8
) -> dict[str, TensorStorage]:
    """Wrap every block linear in ``Int8Linear``; ``quantize_rows`` is the weight round trip
    (in-tree or a library's)."""
    threshold = settings["threshold"]
    act_max = input_absmax(model, calibration.windows(settings))
    storage = {}
    for site, linear in block_linears(model):
        stored = torch.nonzero(act_max[site.index][site.name] >= threshold).flatten()
        replace_module(model, site.path, Int8Linear.wrap(linear, stored, threshold, quantize_rows))
        storage[site.weight] = int8_storage(linear, stored.numel())
    return storage


@register(
    "int8",
    family="quant",
    levels={"none"},
    needs_calibration=True,
    options={
        "threshold": Option(
            positive_float, THRESHOLD, "outlier magnitude for 16-bit decomposition"
        ),
        "backend": Option(backends.parser("int8"), "mpt", "mpt or bitsandbytes"),
    },
)
def int8(model, stage, settings, calibration) -> dict[str, TensorStorage]:
    if settings["backend"] != "mpt":
        return backends.run("int8", model, stage, settings, calibration)
    return apply_int8(model, settings, calibration)
