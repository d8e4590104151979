"""The foreign-device oracle (``tests/test_foreign_device.py``, issue #20) catches a device fix
that is undone: with one fixed helper put back to make its tensor on the default device, a
compression under a ``meta`` default raises, as it would against CUDA weights under a CPU
default, while the same helper still works on the CPU. One method and one engine helper."""

from __future__ import annotations

import pytest
import torch

from mpt_core.engine import lora
from mpt_core.models import load_model
from mpt_core.pipeline import compress
from mpt_core.prune import admm
from mpt_core.spec import Spec


class DefaultDeviceGram(admm.GramStats):
    """ADMM's statistic before its fix: XᵀX made on the default device."""

    def __init__(self, columns: int, device):
        self.XX = torch.zeros(columns, columns)


def default_device_order(chunks: torch.Tensor, seed: int):
    """The LoRA chunk order before its fix: randperm on the default device."""
    order = torch.Generator().manual_seed(seed)
    while True:
        for index in torch.randperm(len(chunks), generator=order).tolist():
            yield chunks[index]


REVERTED = {
    "admm:0.5[iters=2,prune_iters=1]": (admm, "GramStats", DefaultDeviceGram),
    "depth:0.5[heal=lora,steps=2]": (lora, "shuffled", default_device_order),
}


def run(spec: str, calibration, default_device: str) -> None:
    model = load_model("tiny-llama", device="cpu").model
    with torch.device(default_device):
        compress(model, Spec.parse(spec), calibration)


@pytest.mark.parametrize("spec", REVERTED)
def test_the_oracle_fails_a_reverted_fix(spec, fixed_calibration, monkeypatch):
    calibration = fixed_calibration(nsamples=4, seqlen=32)
    run(spec, calibration, "meta")  # fixed: nothing lands on the default device
    module, name, reverted = REVERTED[spec]
    monkeypatch.setattr(module, name, reverted)
    run(spec, calibration, "cpu")  # the reverted helper works where the default is right
    with pytest.raises((RuntimeError, NotImplementedError), match="meta"):
        run(spec, calibration, "meta")
