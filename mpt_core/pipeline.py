"""The one door from the CLI and the plugin to the methods.

The registry finds the methods (every module of ``mpt_core.prune``, ``mpt_core.quant``
and ``mpt_core.lowrank`` registers itself). ``compress(model, spec, calibration)`` runs a
pipeline stage by stage (each stage sees the previous stage's output, and calibration-based stages
capture their activations from the model as it is then) and returns the
footprint of the result.
"""

from __future__ import annotations

import dataclasses

import torch

from mpt_core import registry
from mpt_core.data import CALIBRATION_SPLITS, calibration_windows, data_dir, load_text, tokenize
from mpt_core.quant import backends
from mpt_core.spec import Spec
from mpt_core.storage import Footprint, TensorStorage, dense_numel, measure

PRUNING_FAMILIES = ("unstructured", "semi")


def default_calibration_set() -> str:
    """PTB valid offline (the study's Table 3; never an evaluation split), C4 online."""
    return "ptb" if data_dir() is not None else "c4"


class Calibration:
    """Calibration windows for one tokenizer and seqlen, drawn once per setting."""

    def __init__(self, tokenizer, seqlen: int):
        self.tokenizer = tokenizer
        self.seqlen = seqlen
        self._ids: dict[str, torch.Tensor] = {}
        self._windows: dict[tuple, torch.Tensor] = {}

    def windows(self, settings: dict) -> torch.Tensor:
        dataset = settings.get("calib") or default_calibration_set()
        key = (dataset, settings["nsamples"], settings["seed"])
        if key not in self._windows:
            ids = self._stream(dataset)
            self._windows[key] = calibration_windows(ids, key[1], self.seqlen, key[2])
        return self._windows[key]

    def _stream(self, dataset: str) -> torch.Tensor:
        if dataset not in self._ids:
            text = load_text(dataset, CALIBRATION_SPLITS[dataset])
            self._ids[dataset] = tokenize(self.tokenizer, text)
        return self._ids[dataset]


def resolved_settings(spec: Spec) -> list[dict]:
    """Each stage's options with defaults filled in: what a record stores."""
    settings = []
    for stage in spec.stages:
        method = registry.get(stage.method)
        values = method.settings(stage)
        if method.needs_calibration and values.get("calib") is None:
            values["calib"] = default_calibration_set()
        library = stage_library(method, values)
        if library is not None:
            values["library"] = backends.library_version(library)
        settings.append({"stage": str(stage), **values})
    return settings


def stage_library(method: registry.Method, values: dict) -> str | None:
    """The library that did a stage's work: its backend option, else the method's own."""
    backend = values.get("backend")
    if backend is not None and backend != backends.IN_TREE:
        return backend
    return method.library


def compress(model, spec: Spec, calibration: Calibration | None) -> Footprint:
    """Apply ``spec`` to ``model`` in place and return what the result costs to store."""
    registry.validate(spec)
    reference = dense_numel(model)
    return measure(model, apply_stages(model, spec.stages, calibration), reference)


def apply_stages(
    model, stages, calibration: Calibration | None, storage: dict | None = None
) -> dict[str, TensorStorage]:
    """Apply ``stages`` in order; ``storage`` is what earlier stages left (a pipeline resumed
    after its first stage). Returns every compressed tensor's storage."""
    storage = dict(storage or {})
    for stage in stages:
        method = registry.get(stage.method)
        stage_storage = method.apply(model, stage, method.settings(stage), calibration)
        if registry.family_of(stage) in PRUNING_FAMILIES:
            stage_storage = {
                k: dataclasses.replace(v, sparse=True) for k, v in stage_storage.items()
            }
        storage = merge_storage(storage, stage_storage)
    return storage


def merge_storage(before: dict[str, TensorStorage], after: dict[str, TensorStorage]) -> dict:
    """A later stage's storage wins, but a tensor pruned earlier keeps its sparse layout
    unless the later stage's format stores every element."""
    merged = dict(before)
    for name, storage in after.items():
        previous = before.get(name)
        if previous is not None and not storage.stores_zeros:
            storage = dataclasses.replace(
                storage, nm=storage.nm or previous.nm, sparse=storage.sparse or previous.sparse
            )
        merged[name] = storage
    return merged
