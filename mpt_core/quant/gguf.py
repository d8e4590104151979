"""GGUF k-quants and i-quants, quantized by llama.cpp itself (ggml-org/llama.cpp).

The study's GGUF rows came from llama.cpp, so ``gguf:SCHEME`` runs llama.cpp's own
converter and quantizer, of one llama.cpp version: model -> GGUF F16
(``convert_hf_to_gguf.py``, through ``gguf_convert``) -> quantize with the scheme's
file type (``llama_model_quantize`` from llama-cpp-python) -> dequantize the quantized
file's tensors (the ``gguf`` package's dequantizers, the ones transformers uses) back
into the model in place, undoing what the converter did to each
(``gguf_convert.restore_layout``). The architectures it converts are
``gguf_convert.LAYOUTS``; another is refused before its model loads.

llama.cpp picks each tensor's type itself: a ``_S``/``_M``/``_L`` scheme mixes types
across tensors, and a tensor whose rows are not a multiple of the 256-element k-quant
super-block falls back to another type (on
SmolLM2's 576-wide rows, most of them). The footprint is that real mixture: every
tensor of the file is reported with its ggml type's bits, scales included
(``ggml_storage``), so it sums to the file's tensor bytes; the file size
llama.cpp wrote (tensors + metadata + vocabulary) is logged.

Levels: a scheme llama.cpp knows (``gguf:Q4_K_M``), or bits (``gguf:4``) for the
study's Table 4, whose GGUF rows give only bits; bits map to the scheme the
llama.cpp README recommends at that width: 2 -> Q2_K, 3 -> Q3_K_M, 4 -> Q4_K_M,
5 -> Q5_K_M, 6 -> Q6_K, 8 -> Q8_0.

Importance matrix (option ``imatrix``; default: on where llama.cpp refuses to
quantize without one, the i-quants below 4 bits and Q2_K_S): for every linear of
the decoder blocks, the mean over calibration tokens of each input column's
squared activation, as ``llama-imatrix`` collects it (it skips the LM head too),
computed in torch with hooks on calibration windows, never evaluation text, and
passed through ``llama_model_imatrix_data``.

The quantized file lives in a temporary folder and goes with it, unless ``keeping_files``
is open (``mpt run --save``): then it is moved into that folder as ``model-SCHEME.gguf``
once its tensors are read back, the file llama.cpp loads.
"""

from __future__ import annotations

import contextlib
import ctypes
import difflib
import functools
import logging
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path

import gguf
import numpy as np
import torch
from torch import nn

from mpt_core.engine.layerwise import CALIBRATION_BATCH, block_linears, text_decoder
from mpt_core.engine.modules import forward_hooks
from mpt_core.errors import SpecError
from mpt_core.quant.gguf_convert import (
    GENERATED,
    LLAMA_CPP_VERSION,
    SETUP_COMMAND,
    converter_dir,
    gguf_names,
    restore_layout,
    unconvertible,
    write_gguf,
)
from mpt_core.registry import Option, flag, register
from mpt_core.storage import TensorStorage

LOG = logging.getLogger(__name__)

SETUP_HINT = (
    f"gguf needs llama-cpp-python {LLAMA_CPP_VERSION} (llama.cpp's quantizer) and that "
    f"release's converter; install both once with `{SETUP_COMMAND}` (builds the wheel with "
    "CMAKE_ARGS=-DGGML_NATIVE=OFF into a wheel cache, ~10 min on 2 cores)"
)


def quantizer_missing() -> str | None:
    """SETUP_HINT where llama.cpp's quantizer or converter is not installed, else None."""
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        return SETUP_HINT
    try:
        converter_dir()
    except SpecError:
        return SETUP_HINT
    return None


# llama.h's ``llama_ftype`` quantized file types (their values are ``general.file_type``).
SCHEMES = {
    "Q4_0": 2,
    "Q4_1": 3,
    "Q8_0": 7,
    "Q5_0": 8,
    "Q5_1": 9,
    "Q2_K": 10,
    "Q3_K_S": 11,
    "Q3_K_M": 12,
    "Q3_K_L": 13,
    "Q4_K_S": 14,
    "Q4_K_M": 15,
    "Q5_K_S": 16,
    "Q5_K_M": 17,
    "Q6_K": 18,
    "IQ2_XXS": 19,
    "IQ2_XS": 20,
    "Q2_K_S": 21,
    "IQ3_XS": 22,
    "IQ3_XXS": 23,
    "IQ1_S": 24,
    "IQ4_NL": 25,
    "IQ3_S": 26,
    "IQ3_M": 27,
    "IQ2_S": 28,
    "IQ2_M": 29,
    "IQ4_XS": 30,
    "IQ1_M": 31,
    "TQ1_0": 36,
    "TQ2_0": 37,
}
BITS_SCHEMES = {2: "Q2_K", 3: "Q3_K_M", 4: "Q4_K_M", 5: "Q5_K_M", 6: "Q6_K", 8: "Q8_0"}
# llama.cpp stops with "this quantization requires an imatrix!" for these.
NEEDS_IMATRIX = {
    "IQ1_S",
    "IQ1_M",
    "IQ2_XXS",
    "IQ2_XS",
    "IQ2_S",
    "IQ2_M",
    "IQ3_XXS",
    "IQ3_XS",
    "Q2_K_S",
}


@register(
    "gguf",
    family="quant",
    levels={"scheme", "bits"},
    needs_calibration=True,
    library="llama-cpp-python",
    missing=quantizer_missing,
    refuses=unconvertible,
    check=lambda stage, _settings: scheme_of(stage),
    options={
        "imatrix": Option(flag, None, "importance matrix (default: where llama.cpp needs one)"),
    },
)
def gguf_quant(model, stage, settings, calibration) -> dict[str, TensorStorage]:
    scheme = scheme_of(stage)
    use_imatrix = scheme in NEEDS_IMATRIX if settings["imatrix"] is None else settings["imatrix"]
    if not use_imatrix and scheme in NEEDS_IMATRIX:
        raise SpecError(
            f"llama.cpp quantizes {scheme} only with an importance matrix: drop imatrix=false"
        )
    if calibration is None:
        raise SpecError("gguf writes the model's tokenizer into the file: it needs a Calibration")
    llama_cpp = import_llama_cpp()
    imatrix = importance_matrix(model, calibration.windows(settings)) if use_imatrix else None
    with tempfile.TemporaryDirectory(prefix="mpt-gguf-") as workdir:
        f16 = write_gguf(
            model, calibration.tokenizer, Path(workdir) / "f16.gguf", gguf.GGMLQuantizationType.F16
        )
        quantized = quantize_file(llama_cpp, f16, Path(workdir) / f"{scheme}.gguf", scheme, imatrix)
        LOG.info("gguf:%s %s", scheme, describe(quantized))
        storage = load_quantized(model, quantized)
        _keep(quantized, f"model-{scheme}.gguf")
        return storage


# (folder, the files moved there so far) while ``keeping_files`` is open
_KEEPING: ContextVar[tuple[Path, list[Path]] | None] = ContextVar("gguf_keeping", default=None)


@contextlib.contextmanager
def keeping_files(folder: Path) -> Iterator[list[Path]]:
    """Inside it, every quantized file gguf reads back is moved into ``folder`` instead of
    deleted; yields the list of their paths, in the order the stages made them."""
    kept: list[Path] = []
    token = _KEEPING.set((Path(folder), kept))
    try:
        yield kept
    finally:
        _KEEPING.reset(token)


def _keep(quantized: Path, name: str) -> None:
    if (keeping := _KEEPING.get()) is not None:
        folder, kept = keeping
        kept.append(Path(shutil.move(quantized, folder / name)))


def scheme_of(stage) -> str:
    """The llama.cpp scheme a stage names, directly or through its bits."""
    if stage.level_kind == "bits":
        if stage.bits not in BITS_SCHEMES:
            allowed = ", ".join(f"{bits} ({scheme})" for bits, scheme in BITS_SCHEMES.items())
            raise SpecError(
                f"gguf:{stage.bits}: no default scheme at {stage.bits} bits; bits: {allowed}"
            )
        return BITS_SCHEMES[stage.bits]
    if stage.scheme not in SCHEMES:
        close = difflib.get_close_matches(stage.scheme.upper(), SCHEMES, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        known = ", ".join(SCHEMES)
        raise SpecError(
            f"gguf:{stage.scheme}: llama.cpp knows no such scheme{hint}; it knows {known}"
        )
    return stage.scheme


def import_llama_cpp():
    """llama-cpp-python, or a SpecError that says how to install it."""
    return _llama_cpp()[0]


@functools.cache
def _llama_cpp():
    """Import once; route llama.cpp's log (a line per tensor) to ours at DEBUG level.

    The ctypes callback is returned with the module so that the cache keeps it alive
    for as long as C may call it.
    """
    try:
        import llama_cpp
    except ImportError:
        raise SpecError(SETUP_HINT) from None
    llama_cpp.llama_backend_init()
    callback = llama_cpp.llama_log_callback(_forward_llama_log)
    llama_cpp.llama_log_set(callback, ctypes.c_void_p())
    return llama_cpp, callback


def _forward_llama_log(_level: int, text: bytes, _user_data) -> None:
    LOG.debug("llama.cpp: %s", text.decode("utf-8", "replace").rstrip())


@torch.no_grad()
def importance_matrix(model: nn.Module, windows: torch.Tensor) -> dict[str, np.ndarray]:
    """Mean squared input activation per column of every decoder linear, by GGUF name."""
    names = gguf_names(model)
    sums: dict[str, torch.Tensor] = {}
    counts: Counter[str] = Counter()

    def collect(name: str):
        def hook(_module, args):
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])
            sums[name] = sums.get(name, 0) + (x * x).sum(0)
            counts[name] += x.shape[0]

        return hook

    device = next(model.parameters()).device
    linears = {names[site.weight]: linear for site, linear in block_linears(model)}
    decoder = text_decoder(model)
    with forward_hooks(linears, collect, pre=True):
        for batch in windows.split(CALIBRATION_BATCH):
            # the decoder stack only: the LM head has no imatrix entry and its logits are big
            decoder(batch.to(device), use_cache=False)
    return {name: (total / counts[name]).cpu().numpy() for name, total in sums.items()}


def quantize_file(llama_cpp, source: Path, target: Path, scheme: str, imatrix: dict | None) -> Path:
    """``llama_model_quantize`` from ``source`` (F16 GGUF) to ``target`` with ``scheme``."""
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = SCHEMES[scheme]
    if imatrix:
        entries = _imatrix_entries(llama_cpp, imatrix)
        params.imatrix = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    status = llama_cpp.llama_model_quantize(
        str(source).encode(), str(target).encode(), ctypes.byref(params)
    )
    if status != 0:
        raise SpecError(
            f"llama.cpp could not quantize to {scheme} (status {status}); "
            f"its log is on logger {LOG.name} at DEBUG level"
        )
    return target


def _imatrix_entries(llama_cpp, imatrix: dict[str, np.ndarray]):
    """A NULL-name-terminated C array of ``llama_model_imatrix_data`` (llama.cpp copies it)."""
    entry = llama_cpp.llama_model_imatrix_data
    arrays = {
        name: np.ascontiguousarray(values, dtype=np.float32) for name, values in imatrix.items()
    }
    entries = (entry * (len(arrays) + 1))()
    for slot, (name, values) in zip(entries, arrays.items()):
        slot.name = name.encode()
        slot.data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        slot.size = values.size
    entries._keep = arrays  # the floats must stay alive until llama.cpp has copied them
    return entries


@torch.no_grad()
def load_quantized(model: nn.Module, path: Path) -> dict[str, TensorStorage]:
    """Copy the dequantized tensors of ``path`` into ``model``; the storage of each."""
    parameters = dict(model.named_parameters())
    by_gguf_name = {gguf_name: name for name, gguf_name in gguf_names(model).items()}
    storage = {}
    for tensor in gguf.GGUFReader(path).tensors:
        if tensor.name in GENERATED:
            continue
        name = by_gguf_name[tensor.name]
        param = parameters[name]
        # torch.tensor copies (F16/F32 tensors come back as read-only views of the mapped
        # file) into host memory, where the numpy array is; copy_ then moves it to the weight
        values = torch.tensor(gguf.quants.dequantize(tensor.data, tensor.tensor_type), device="cpu")
        values = restore_layout(model, name, values, param.shape)
        # a Gemma-3 embedding comes back with the tokenizer's rows only; the rest stay
        param[: len(values)].copy_(values.to(param.dtype))
        storage[name] = ggml_storage(tensor.tensor_type)
    return storage


def ggml_storage(ggml_type: gguf.GGMLQuantizationType) -> TensorStorage:
    """A ggml type's exact bits: whole bits per value, the rest of each block as its scales."""
    block, block_bytes = gguf.GGML_QUANT_SIZES[ggml_type]
    if block == 1:
        return TensorStorage(value_bits=8 * block_bytes, stores_zeros=True)
    value_bits = 8 * block_bytes // block
    return TensorStorage(
        value_bits=value_bits,
        group_size=block,
        scale_bits=8 * block_bytes - value_bits * block,
        stores_zeros=True,
    )


def mixture(path: Path) -> dict[str, int]:
    """How many tensors of the file llama.cpp gave each ggml type."""
    return dict(Counter(tensor.tensor_type.name for tensor in gguf.GGUFReader(path).tensors))


def describe(path: Path) -> str:
    reader = gguf.GGUFReader(path)
    tensor_bytes = sum(int(tensor.n_bytes) for tensor in reader.tensors)
    return f"file {path.stat().st_size} bytes (tensors {tensor_bytes}), types {mixture(path)}"
