"""Running a library backend from its own virtual environment.

gptqmodel and llmcompressor pin transformers versions of their own, so each lives in
``.venv-NAME`` (``scripts/setup_backend_venv.sh NAME``) in the repository root, or in
``$MPT_BACKEND_VENVS``. mpt writes a job folder: the model as it holds it now
(safetensors, so an earlier pipeline stage's work is included), the calibration windows
mpt's in-tree methods would use (same data set, count, seed and seqlen) and the
method's options; it runs ``runner.py`` with that venv's python, and reads back the
decoder-layer weights the library produced and what the library's checkpoint stores.

Storage is what the library's own checkpoint keeps for each weight, to the bit: the
packed integers, the scales and zero points per group at the width the library stores
them (gptqmodel: fp16 scales, zero points packed at ``bits``; llmcompressor: scales in
the model's dtype, zero points packed at ``bits``), and the rest (gptqmodel's
``g_idx``, llmcompressor's ``weight_shape``) as extra bits of the tensor.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mpt_core.engine.layerwise import block_linear_names
from mpt_core.errors import BackendError, SpecError
from mpt_core.models import cache_dir
from mpt_core.storage import TensorStorage

REPOSITORY = Path(__file__).resolve().parents[3]
RUNNER = Path(__file__).with_name("runner.py")
SCALES = ("scales", "weight_scale")
ZEROS = ("qzeros", "weight_zero_point")


def venv_python(library: str) -> Path:
    """The python of ``.venv-<library>``; a one-line SpecError naming the setup command
    where it does not exist."""
    folder = Path(os.environ.get("MPT_BACKEND_VENVS") or REPOSITORY) / f".venv-{library}"
    python = folder / "bin" / "python"
    if not python.exists():
        raise SpecError(
            f"backend {library} not installed: it runs from its own venv {folder} (its pins "
            f"conflict with mpt's); create it with scripts/setup_backend_venv.sh {library}"
        )
    return python


def venv_site_packages(library: str) -> Path:
    """The site-packages folder of ``.venv-<library>`` (its python's version in the path)."""
    lib = venv_python(library).parents[1] / "lib"
    return next(lib.glob("python*/site-packages"))


def quantize_in_venv(
    library: str, method: str, model: nn.Module, bits: int, settings: dict, calibration
) -> dict[str, TensorStorage]:
    """Quantize ``model`` in place with ``library`` and return each weight's storage."""
    python = venv_python(library)
    with tempfile.TemporaryDirectory(prefix=f"mpt-{library}-") as folder:
        job = Path(folder)
        write_job(job, library, method, model, bits, settings, calibration)
        run_runner(python, job, library)
        return read_result(job, model, bits, settings.get("group"))


def write_job(
    job: Path, library: str, method: str, model: nn.Module, bits: int, settings: dict, calibration
) -> None:
    model.save_pretrained(job / "model")
    calibration.tokenizer.save_pretrained(job / "model")
    windows = calibration.windows(settings).cpu().contiguous()
    save_file({"input_ids": windows}, str(job / "calibration.safetensors"))
    request = {
        "library": library,
        "method": method,
        "bits": bits,
        "group": settings.get("group"),
        "sym": settings.get("sym", False),
        "act_order": settings.get("act_order", False),
        "static_groups": settings.get("static_groups", False),
        "damp": settings.get("damp", 0.01),
    }
    (job / "job.json").write_text(json.dumps(request, indent=1))
    (job / "result").mkdir()


def run_runner(python: Path, job: Path, library: str) -> None:
    """Run the library. Its long log is kept only on failure, in the cache folder, and its
    last line goes into the error."""
    env = dict(os.environ)
    # gptqmodel sizes its CPU thread pool from the core count and refuses fewer than 2
    # workers, which is what it picks on a 2-core machine
    env.setdefault("GPTQMODEL_CPU_WORKERS", "2")
    log = job / "runner.log"
    with log.open("w") as out:
        code = subprocess.call(
            [str(python), "-I", str(RUNNER), str(job)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    if code != 0:
        kept = cache_dir() / f"{library}-runner.log"
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(log, kept)
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        last = lines[-1].strip() if lines else "no output"
        raise BackendError(f"backend {library} failed (exit {code}): {last} (log: {kept})")


@torch.no_grad()
def read_result(job: Path, model: nn.Module, bits: int, group: int | None) -> dict:
    """Load the library's weights into ``model``; storage per quantized weight from facts."""
    facts = json.loads((job / "result" / "facts.json").read_text())
    weights = load_file(str(job / "result" / "weights.safetensors"))
    state = model.state_dict()
    for name, tensor in weights.items():
        state[name].copy_(tensor.reshape(state[name].shape))
    expected = set(block_linear_names(model))
    if set(facts["stored"]) != expected:
        raise BackendError(
            f"backend {facts['library']} quantized {len(facts['stored'])} weights, "
            f"mpt expected the {len(expected)} decoder linears"
        )
    storage = {}
    for name, stored in facts["stored"].items():
        weight = state[name]
        storage[name] = library_storage(stored, weight.numel(), bits, group or weight.shape[1])
    return storage


def library_storage(stored: dict, numel: int, bits: int, group: int) -> TensorStorage:
    """A TensorStorage whose bits add up to exactly the bytes the library stores."""
    total = 8 * sum(tensor["bytes"] for tensor in stored.values())
    groups = numel // group
    scale_bits = 8 * sum(stored[s]["bytes"] for s in SCALES if s in stored) // groups
    zero_bits = 8 * sum(stored[s]["bytes"] for s in ZEROS if s in stored) // groups
    extra_bits = total - numel * bits - groups * (scale_bits + zero_bits)
    return TensorStorage(
        value_bits=bits,
        group_size=group,
        scale_bits=scale_bits,
        zero_bits=zero_bits,
        extra_bits=extra_bits,
    )
