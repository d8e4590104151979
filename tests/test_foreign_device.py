"""Device discipline, proven without a GPU (issue #20): no method makes a tensor on the
*default* device.

Every registered method runs (each level kind it takes: the tiny tier's grids) on a model
held on the CPU while ``torch.device("meta")`` is the default device. A statistic, constant
or module made without naming its device lands on ``meta`` and either raises when it meets
the CPU weights or leaves a ``meta`` tensor in the model: the same mistakes that raise on a
CUDA runner when a CPU default meets CUDA weights.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mpt_core import registry
from mpt_core.harness.baseline_record import read_grid
from mpt_core.pipeline import compress
from mpt_core.spec import Spec

GRIDS = Path(__file__).resolve().parent.parent / "baselines" / "cpu" / "grids" / "tiny-llama"
SPECS = sorted({spec for grid in GRIDS.glob("*.txt") for spec in read_grid(grid)} - {"dense"})


def test_the_specs_cover_every_registered_method():
    covered = {method for spec in SPECS for method in Spec.parse(spec).methods}
    assert covered == set(registry.names())


@pytest.mark.parametrize("spec", SPECS)
def test_compression_makes_nothing_on_the_default_device(spec, fixed_calibration):
    from mpt_core.models import load_model

    if "gguf" in spec:
        pytest.importorskip("llama_cpp", reason="llama.cpp's quantizer: scripts/setup_gguf.sh")
    if hint := registry.get(Spec.parse(spec).stages[-1].method).unavailable():
        pytest.skip(hint)
    loaded = load_model("tiny-llama", device="cpu")
    model = loaded.model
    calibration = fixed_calibration(nsamples=4, seqlen=32)
    calibration.tokenizer = loaded.tokenizer  # gguf writes it into the file it quantizes
    with torch.device("meta"):
        compress(model, Spec.parse(spec), calibration)
    stray = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    assert not stray, f"{spec} left tensors on the default device: {stray[:5]}"
    with torch.no_grad():
        logits = model(calibration.windows(None)[:1]).logits
    assert logits.device.type == "cpu" and torch.isfinite(logits).all()
