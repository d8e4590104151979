"""llmcompressor as a backend (it runs from its own virtual environment, .venv-llmcompressor).

Its pins conflict with mpt's transformers, so it is never installed next to mpt.
Where the package cannot be imported, selecting it raises a one-line SpecError that
says where it runs; mpt does not yet drive it across environments, and says so
rather than falling back to the in-tree method.
"""

from __future__ import annotations

from mpt_core.errors import SpecError
from mpt_core.quant.backends import require


def apply(method: str, model, stage, settings: dict, calibration) -> dict:
    require("llmcompressor", "llmcompressor", own_venv=True)
    raise SpecError(
        f"backend llmcompressor is importable here, but mpt runs it only from "
        f".venv-llmcompressor, whose runner is not written yet: use backend=mpt for {method}"
    )
