"""llmcompressor as a backend: GPTQ and AWQ through ``oneshot`` (vLLM's compressor).

llmcompressor 0.14 runs on the CPU but pins transformers 5.17, so it runs from its own
virtual environment (``.venv-llmcompressor``) through ``venv``. Its checkpoint is
compressed-tensors' ``pack-quantized`` layout: values packed in int32
(``weight_packed``), scales in the model's dtype (``weight_scale``), zero points packed
like the values (``weight_zero_point``) and the original shape (``weight_shape``); the
footprint counts exactly those.
"""

from __future__ import annotations

from mpt_core.errors import SpecError
from mpt_core.quant.backends.venv import quantize_in_venv, venv_python
from mpt_core.storage import TensorStorage

METHODS = ("gptq", "awq")


def apply(method: str, model, stage, settings: dict, calibration) -> dict[str, TensorStorage]:
    venv_python("llmcompressor")
    if method not in METHODS:
        raise SpecError(
            f"backend llmcompressor runs {' and '.join(METHODS)} here, not {method}: "
            f"its activation quantization would have to run in mpt's forward pass; use backend=mpt"
        )
    return quantize_in_venv("llmcompressor", method, model, stage.bits, settings, calibration)
