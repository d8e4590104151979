"""GPTQ: accurate post-training quantization for generative transformers
(Frantar, Ashkboos, Hoefler, Alistarh; ICLR 2023, arXiv:2210.17323).

Each linear layer is quantized column by column; after each column the error it
made is spread over the columns not yet quantized, weighted by the inverse Hessian
H = 2XXᵀ of the layer's calibration inputs (Optimal Brain Quantization). The loop
is the paper's Algorithm 1 as IST-DASLab/gptq ``GPTQ.fasterquant`` writes it: the
inverse Hessian through its upper Cholesky factor, lazy batches of 128 columns, a
grid found per ``group`` columns as the sweep reaches them (``static_groups``:
found on the original weights before the sweep), and ``act_order`` (columns in
order of decreasing Hessian diagonal, permutation undone at the end). The grid is
GPTQ's ``Quantizer``: ``mpt_core.quant.grid``.

Storage: as RTN (``bits`` per weight, fp16 scale and zero per group); with
``act_order`` and dynamic groups a column's group is no longer its position, so the
group index of every input column (int32, GPTQ's ``g_idx``) is counted too.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from mpt_core.engine.layerwise import LinearSite, compress_layerwise
from mpt_core.engine.signals import HessianStats, inverse_hessian_cholesky
from mpt_core.quant import backends
from mpt_core.quant.grid import check_groups, find_grid, quantize, rtn_storage
from mpt_core.registry import Option, flag, float_in, positive_int, register
from mpt_core.storage import TensorStorage

BLOCKSIZE = 128
G_IDX_BITS = 32
DAMP = float_in(
    0,
    1,
    low_open=True,
    high_open=True,
    what="the dampening (a fraction of the mean Hessian diagonal)",
)


@register(
    "gptq",
    family="quant",
    levels={"bits"},
    needs_calibration=True,
    options={
        "group": Option(positive_int, None, "input weights per scale group (default: whole row)"),
        "sym": Option(flag, False, "symmetric grid, no zero point"),
        "act_order": Option(flag, False, "quantize columns by decreasing Hessian diagonal"),
        "static_groups": Option(flag, False, "find every group's grid before the sweep"),
        "damp": Option(DAMP, 0.01, "dampening: fraction of mean diag(H) added to diag(H)"),
        "backend": Option(backends.parser("gptq"), "mpt", "mpt (in-tree) or a library"),
    },
)
@torch.no_grad()
def gptq(model, stage, settings, calibration) -> dict[str, TensorStorage]:
    groups = check_groups(model, settings["group"])
    if settings["backend"] != "mpt":
        return backends.run("gptq", model, stage, settings, calibration)
    windows = calibration.windows(settings)

    def compress(site: LinearSite, linear: nn.Linear, stats: GPTQ) -> TensorStorage:
        group = groups[site.name]
        linear.weight.copy_(
            stats.fasterquant(
                linear.weight,
                stage.bits,
                settings["sym"],
                blocksize=BLOCKSIZE,
                percdamp=settings["damp"],
                groupsize=group,
                actorder=settings["act_order"],
                static_groups=settings["static_groups"],
            )
        )
        return gptq_storage(stage.bits, group, linear.in_features, settings)

    return compress_layerwise(model, windows, lambda _site, linear: GPTQ(linear), compress)


def gptq_storage(bits: int, group: int, columns: int, settings: dict) -> TensorStorage:
    storage = rtn_storage(bits, group, settings["sym"])
    if settings["act_order"] and not settings["static_groups"] and group < columns:
        return dataclasses.replace(storage, extra_bits=columns * G_IDX_BITS)
    return storage


class GPTQ(HessianStats):
    """The Hessian of one linear layer's inputs (``HessianStats``: H = 2/n Σ x xᵀ, a running
    mean over the sequences seen so far) and the quantization sweep that uses it."""

    def __init__(self, linear: nn.Linear):
        super().__init__(linear)
        self.columns = linear.in_features

    @torch.no_grad()
    def fasterquant(
        self,
        weight: torch.Tensor,
        bits: int,
        sym: bool,
        blocksize: int = BLOCKSIZE,
        percdamp: float = 0.01,
        groupsize: int | None = None,
        actorder: bool = False,
        static_groups: bool = False,
    ) -> torch.Tensor:
        """The quantized (dequantized) weights Q of ``weight``: Algorithm 1 with lazy batches."""
        W = weight.detach().float().clone()
        groupsize = groupsize or self.columns
        grid = find_grid(W, bits, sym)  # per row; replaced per group when groups are used

        H = self.H
        self.H = None
        dead = torch.diag(H) == 0
        H[dead, dead] = 1
        W[:, dead] = 0

        if static_groups:
            groups = [
                find_grid(W[:, i : i + groupsize], bits, sym)
                for i in range(0, self.columns, groupsize)
            ]

        if actorder:
            perm = torch.argsort(torch.diag(H), descending=True)
            W = W[:, perm]
            H = H[perm][:, perm]
            invperm = torch.argsort(perm)

        Q = torch.zeros_like(W)
        Hinv = inverse_hessian_cholesky(H, percdamp)

        for i1 in range(0, self.columns, blocksize):
            i2 = min(i1 + blocksize, self.columns)
            count = i2 - i1

            W1 = W[:, i1:i2].clone()
            Q1 = torch.zeros_like(W1)
            Err1 = torch.zeros_like(W1)
            Hinv1 = Hinv[i1:i2, i1:i2]

            for i in range(count):
                w = W1[:, i]
                d = Hinv1[i, i]

                if groupsize != self.columns:
                    if static_groups:
                        idx = perm[i1 + i] if actorder else i1 + i
                        grid = groups[idx // groupsize]
                    elif (i1 + i) % groupsize == 0:
                        # As the reference: the group's grid comes from W, which holds the
                        # error updates of earlier blocks but not yet those of this block.
                        grid = find_grid(W[:, i1 + i : i1 + i + groupsize], bits, sym)

                q = quantize(w.unsqueeze(1), grid).flatten()
                Q1[:, i] = q

                err1 = (w - q) / d
                W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
                Err1[:, i] = err1

            Q[:, i1:i2] = Q1
            # lazy batch update: the block's accumulated error reaches later columns at once
            W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])

        if actorder:
            Q = Q[:, invperm]
        return Q.to(weight.dtype)
