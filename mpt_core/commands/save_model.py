"""``mpt run --save DIR``: the compressed model as a transformers checkpoint.

``save_pretrained`` writes safetensors with the model's config, so the folder reloads with
``AutoModelForCausalLM.from_pretrained(DIR)``. That rebuilds every module from the config
alone: a method that changed the architecture (SliceGPT's narrower stream, low-rank
factors, FLAP's added biases, int8 layers) would reload wrong or not at all, so such a
model is refused, found by comparing it with the model its config builds. The folder is
written beside DIR and renamed into place: DIR is never half written.

A spec whose last stage is gguf also writes the file llama.cpp quantized, the one whose
tensors were read back into the model (``DIR/model-SCHEME.gguf``, which llama.cpp loads):
the method keeps it while ``saving`` is open (``quant.gguf.keeping_files``) instead of
deleting it, so it is not quantized twice. After a later stage the file no longer holds
the model, so only the checkpoint is written.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from mpt_core.errors import MptError
from mpt_core.spec import Spec


def check_save_dir(path: str | None) -> None:
    """Refuse a ``--save`` folder that cannot take the model, before anything loads."""
    if path is None:
        return
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise MptError(f"--save {path} is a file: name a new folder")
    if target.is_dir() and any(target.iterdir()):
        raise MptError(f"--save {path} is a folder that is not empty: name a new or empty one")
    if not target.parent.is_dir():
        raise MptError(f"--save {path}: folder {target.parent} does not exist: create it first")
    if not os.access(target.parent, os.W_OK):
        raise MptError(f"--save {path}: folder {target.parent} is not writable")


def architecture_change(model: nn.Module) -> str | None:
    """What of ``model`` its config cannot rebuild (a module, a tensor or a hook), or None."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(model.config)
    fresh_modules = dict(fresh.named_modules())
    for name, module in model.named_modules():
        where = name or "the model"
        if type(fresh_modules.get(name)) is not type(module):
            return f"{where} is a {type(module).__name__}"
        if module._forward_hooks or module._forward_pre_hooks:
            return f"{where} carries a forward hook"
    shapes = {key: tuple(value.shape) for key, value in fresh.state_dict().items()}
    for key, value in model.state_dict().items():
        expected = shapes.pop(key, None)
        if expected != tuple(value.shape):
            return f"{key} has shape {tuple(value.shape)}, the config builds {expected}"
    if shapes:
        return f"{next(iter(shapes))} is missing"
    return None


@contextlib.contextmanager
def saving(path: str | None, spec: Spec) -> Iterator[Callable | None]:
    """The ``Session`` callback that writes the compressed model to ``path`` (None: no
    ``--save``); for a spec that ends with gguf, the quantized file is kept meanwhile in a
    folder beside ``path`` and moved in with the checkpoint."""
    if path is None:
        yield None
        return
    if spec.stages[-1].method != "gguf":
        yield lambda loaded: save_compressed(loaded.model, loaded.tokenizer, path, str(spec))
        return
    from mpt_core.quant.gguf import keeping_files

    target = Path(path)
    with (
        tempfile.TemporaryDirectory(prefix=f".{target.name}.gguf-", dir=target.parent) as kept,
        keeping_files(Path(kept)) as files,
    ):
        # the last stage's file is the last one kept: it holds the model as it is saved
        yield lambda loaded: save_compressed(
            loaded.model, loaded.tokenizer, path, str(spec), files[-1:]
        )


def save_compressed(
    model: nn.Module, tokenizer, path: str, spec: str, extra: list[Path] | tuple = ()
) -> None:
    """Write ``model`` (compressed by ``spec``) and its tokenizer to the folder ``path``,
    with the files ``extra`` moved in beside them."""
    change = architecture_change(model)
    if change is not None:
        raise MptError(
            f"--save: {spec} changes the architecture ({change}), which transformers cannot "
            "rebuild from a config: run it without --save"
        )
    target = Path(path)
    partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        partial.chmod(0o777 & ~current_umask())  # mkdtemp's 0700 would hide it from others
        write_checkpoint(model, tokenizer, partial)
        for file in extra:
            shutil.move(file, partial / file.name)
        for file in partial.iterdir():  # safetensors writes its file 0600, like a temp file
            file.chmod(0o666 & ~current_umask())
        partial.replace(target)  # rename(2): also over an empty folder, never over a full one
    except OSError as error:
        raise MptError(f"--save {path}: could not write the model: {error}") from None
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_checkpoint(model: nn.Module, tokenizer, folder: Path) -> None:
    """``save_pretrained`` of both; the saved config keeps the KV cache on for generation
    (mpt turns it off for its own scoring only)."""
    use_cache = model.config.use_cache
    model.config.use_cache = True
    try:
        model.save_pretrained(folder)
    finally:
        model.config.use_cache = use_cache
    tokenizer.save_pretrained(folder)
