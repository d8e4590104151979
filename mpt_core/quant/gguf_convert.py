"""Model -> GGUF by llama.cpp's own converter, and the file's tensors back to the model's names.

The converter is ``convert_hf_to_gguf.py`` (with its ``conversion/`` and ``gguf-py/``) of
the llama.cpp commit that llama-cpp-python 0.3.36 builds, the one whose quantizer mpt runs;
``scripts/setup_gguf.sh`` unpacks it from that release's sdist into
``$MPT_CACHE_DIR/llama.cpp-0.3.36``, and mpt never copies it. ``write_gguf`` saves the
model and its tokenizer to a temporary folder (``save_pretrained``) and runs the converter
on it in a subprocess (``backends/llama_cpp_convert.py``, which says the one thing it
changes), with ``--outtype f16|f32``.

Reading a file back means undoing what the converter did to each tensor; it differs by
architecture (``LAYOUTS``, read from ``conversion/llama.py``, ``qwen.py``, ``gemma.py``):

- LLaMA (``LlamaModel.permute``): ``q_proj``/``k_proj`` rows go from HF's rotary halves to
  llama.cpp's interleaved pairs; ``unpermute`` undoes it. Qwen2 and Gemma-3 are not permuted.
  A ``llama3`` rope scaling adds a ``rope_freqs`` tensor, which is no parameter.
- Gemma-3 (``Gemma3Model.modify_tensors``): every ``*norm.weight`` is written plus 1 (HF's
  ``Gemma3RMSNorm`` multiplies by ``1 + weight``), and the embedding keeps only the
  tokenizer's rows (the rest of a padded vocabulary is dropped, and stays as it was).
- a tied LM head is written once, as ``token_embd``.
- Gemma-3 4B/12B/27B (``Gemma3ForConditionalGeneration``, the same ``Gemma3Model``
  converter class): the text decoder is written as Gemma-3 1B's is, under the names the
  converter gives it after dropping ``language_model.`` (``ModelBase.filter_tensors``); the
  vision encoder and its projector are skipped (``TextModel.filter_tensors``: llama.cpp
  writes them to a separate ``mmproj`` file, with ``--mmproj``, which mpt does not make:
  it evaluates text only), so they are neither quantized nor read back.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import gguf
import torch
from torch import nn

from mpt_core.errors import ModelError, SpecError
from mpt_core.models import cache_dir
from mpt_core.storage import language_model_parameters

LLAMA_CPP_VERSION = "0.3.36"
SETUP_COMMAND = "scripts/setup_gguf.sh"
DRIVER = Path(__file__).parent / "backends" / "llama_cpp_convert.py"
OUTTYPES = {gguf.GGMLQuantizationType.F32: "f32", gguf.GGMLQuantizationType.F16: "f16"}
GENERATED = {"rope_freqs.weight"}  # tensors the converter computes (llama3 rope scaling)
NESTED_TEXT = "language_model."  # what the converter drops from a multimodal model's names


@dataclass(frozen=True)
class Layout:
    """How llama.cpp's converter writes one architecture's tensors."""

    arch: gguf.MODEL_ARCH
    permuted: bool  # q/k rows reordered for llama.cpp's rope (LlamaModel only)
    norm_shift: float = 0.0  # added to every *norm.weight


# HF model class -> its converter class's layout; what mpt converts and reads back.
LAYOUTS = {
    "LlamaForCausalLM": Layout(gguf.MODEL_ARCH.LLAMA, permuted=True),
    "Qwen2ForCausalLM": Layout(gguf.MODEL_ARCH.QWEN2, permuted=False),
    "Gemma3ForCausalLM": Layout(gguf.MODEL_ARCH.GEMMA3, permuted=False, norm_shift=1.0),
    "Gemma3ForConditionalGeneration": Layout(
        gguf.MODEL_ARCH.GEMMA3, permuted=False, norm_shift=1.0
    ),
}


def unconvertible(architecture: str) -> str | None:
    """Why a model of class ``architecture`` cannot go through gguf, else None."""
    if architecture in LAYOUTS:
        return None
    return (
        f"gguf cannot convert {architecture}: mpt runs llama.cpp's converter and reads it "
        f"back for {', '.join(LAYOUTS)}"
    )


def layout_of(model: nn.Module) -> Layout:
    if reason := unconvertible(type(model).__name__):
        raise SpecError(reason)
    return LAYOUTS[type(model).__name__]


def converter_dir() -> Path:
    """The unpacked converter, or a one-line error naming the setup script."""
    folder = cache_dir() / f"llama.cpp-{LLAMA_CPP_VERSION}"
    if not (folder / "convert_hf_to_gguf.py").is_file():
        raise SpecError(f"gguf needs llama.cpp's converter in {folder}: run `{SETUP_COMMAND}` once")
    return folder


def _save_keeping_config(model: nn.Module, folder: str) -> None:
    """``save_pretrained`` writes ``architectures`` and ``dtype`` into the live model's
    config too; put it back, so the model stays the one its snapshot restores in place."""
    before = copy.deepcopy(model.config.__dict__)
    try:
        model.save_pretrained(folder)
    finally:
        model.config.__dict__.clear()
        model.config.__dict__.update(before)


def write_gguf(
    model: nn.Module, tokenizer, path: str | Path, dtype: gguf.GGMLQuantizationType
) -> Path:
    """Convert ``model`` and its tokenizer to ``path`` (F16 or F32) with llama.cpp's converter."""
    if dtype not in OUTTYPES:
        raise ValueError(f"GGUF output type must be F32 or F16, not {dtype.name}")
    layout_of(model)
    converter = converter_dir()
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="mpt-hf-") as folder:
        _save_keeping_config(model, folder)
        tokenizer.save_pretrained(folder)
        command = [sys.executable, "-I", str(DRIVER), str(converter), folder]
        command += ["--outfile", str(path), "--outtype", OUTTYPES[dtype]]
        done = subprocess.run(command, capture_output=True, text=True, env=_converter_env())
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ModelError(f"llama.cpp's converter failed on {type(model).__name__}: {last}")
    return path


def _converter_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # the converter brings its own gguf package (gguf-py)
    return env


def gguf_names(model: nn.Module) -> dict[str, str]:
    """GGUF tensor name of every (untied) parameter the converter writes, as it names it."""
    layout = layout_of(model)
    names = gguf.TensorNameMap(layout.arch, model.config.get_text_config().num_hidden_layers)
    mapping = {}
    for name, _ in language_model_parameters(model):
        converted = name.replace(NESTED_TEXT, "")
        mapped = names.get_name(converted, try_suffixes=(".weight", ".bias"))
        if mapped is None:
            raise ModelError(f"no GGUF name for parameter {name}")
        mapping[name] = mapped
    return mapping


@torch.no_grad()
def restore_layout(model: nn.Module, name: str, values: torch.Tensor, shape) -> torch.Tensor:
    """A tensor as the file holds it -> as parameter ``name`` of ``model`` holds it."""
    layout = layout_of(model)
    heads = rotary_heads(model.config.get_text_config(), name) if layout.permuted else None
    if heads:
        values = unpermute(values, heads)
    if layout.norm_shift and name.endswith("norm.weight"):
        values = values - layout.norm_shift
    return values.reshape(-1, *shape[1:]) if len(shape) > 1 else values.reshape(shape)


def rotary_heads(config, name: str) -> int | None:
    """Heads of a query/key projection (whose rows llama.cpp reorders); None otherwise."""
    if name.endswith(("self_attn.q_proj.weight", "self_attn.q_proj.bias")):
        return config.num_attention_heads
    if name.endswith(("self_attn.k_proj.weight", "self_attn.k_proj.bias")):
        return config.num_key_value_heads
    return None


def unpermute(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's interleaved rotary pairs back to HF's halves (undoes ``LlamaModel.permute``)."""
    shape = weight.shape
    return (
        weight.reshape(heads, shape[0] // heads // 2, 2, *shape[1:]).swapaxes(1, 2).reshape(shape)
    )
