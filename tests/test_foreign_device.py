"""Device discipline, proven without a GPU (issue #20): no method makes a tensor on the
*default* device.

Every registered method runs (each level kind it takes: the tiny tier's grids) on a model
held on the CPU while ``torch.device("meta")`` is the default device. A statistic, constant
or module made without naming its device lands on ``meta`` and either raises when it meets
the CPU weights or leaves a ``meta`` tensor in the model: the same mistakes that raise on a
CUDA runner when a CPU default meets CUDA weights. With ``MPT_TEST_DEVICE=cuda``
(``scripts/gpu_check.sh``) the model sits on the GPU and the default device stays the CPU:
the real thing. A second test runs each in fp16, the study's dtype.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
import torch

from mpt_core import registry
from mpt_core.harness.baseline_record import read_grid
from mpt_core.pipeline import compress
from mpt_core.spec import Spec

GRIDS = Path(__file__).resolve().parent.parent / "baselines" / "cpu" / "grids" / "tiny-llama"
DEVICE = os.environ.get("MPT_TEST_DEVICE", "cpu")
# the default device a mistake lands on: meta on the CPU, the CPU itself beside a GPU
FOREIGN = "meta" if DEVICE == "cpu" else "cpu"
SPECS = sorted({spec for grid in GRIDS.glob("*.txt") for spec in read_grid(grid)} - {"dense"})
# one spec per method (or pipeline of methods): a dtype mistake does not depend on the level
ONE_PER_METHOD = list({tuple(Spec.parse(spec).methods): spec for spec in reversed(SPECS)}.values())


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
    loaded = load_model("tiny-llama", device=DEVICE)
    model = loaded.model
    calibration = fixed_calibration(nsamples=4, seqlen=32)
    calibration.tokenizer = loaded.tokenizer  # gguf writes it into the file it quantizes
    default = torch.device(FOREIGN) if FOREIGN == "meta" else contextlib.nullcontext()
    with default:
        compress(model, Spec.parse(spec), calibration)
    tensors = [*model.named_parameters(), *model.named_buffers()]
    stray = [name for name, t in tensors if t.device.type != torch.device(DEVICE).type]
    assert not stray, f"{spec} left tensors on the default device: {stray[:5]}"
    with torch.no_grad():
        logits = model(calibration.windows(None)[:1].to(DEVICE)).logits
    assert logits.device.type == torch.device(DEVICE).type and torch.isfinite(logits).all()


@pytest.mark.parametrize("spec", ONE_PER_METHOD)
def test_compression_in_the_study_dtype_leaves_a_finite_model(spec, fixed_calibration):
    """The study's models run in fp16: a method that mixes an fp32 statistic into an fp16
    forward, or trains fp16 weights with AdamW (its eps rounds to 0), breaks here first."""
    from mpt_core.models import load_model

    if "gguf" in spec:
        pytest.importorskip("llama_cpp", reason="llama.cpp's quantizer: scripts/setup_gguf.sh")
    if hint := registry.get(Spec.parse(spec).stages[-1].method).unavailable():
        pytest.skip(hint)
    loaded = load_model("tiny-llama", device=DEVICE, dtype=torch.float16)
    calibration = fixed_calibration(nsamples=4, seqlen=32)
    calibration.tokenizer = loaded.tokenizer
    compress(loaded.model, Spec.parse(spec), calibration)
    assert {p.dtype for p in loaded.model.parameters()} == {torch.float16}
    with torch.no_grad():
        logits = loaded.model(calibration.windows(None)[:1].to(DEVICE)).logits
    assert torch.isfinite(logits).all(), f"{spec} in fp16 left a model with non-finite logits"
