"""gptqmodel as a backend: GPTQ by the maintained successor of auto-gptq.

gptqmodel 7.6 quantizes on the CPU; it runs from its own virtual environment
(``.venv-gptqmodel``) through ``venv``. Its checkpoint format is GPTQ's: 4-bit values
packed in int32 (``qweight``), fp16 ``scales``, zero points packed like the values
(``qzeros``) and an int32 group index per input column (``g_idx``, stored even without
``act_order``); the footprint counts exactly those.
"""

from __future__ import annotations

from mpt_core.quant.backends.venv import quantize_in_venv
from mpt_core.storage import TensorStorage


def apply(method: str, model, stage, settings: dict, calibration) -> dict[str, TensorStorage]:
    return quantize_in_venv("gptqmodel", method, model, stage.bits, settings, calibration)
