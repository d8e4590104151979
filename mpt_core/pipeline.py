"""The one door from the CLI and the plugin to the methods.

The registry finds the methods (every module of ``mpt_core.prune``, ``mpt_core.quant``
and ``mpt_core.lowrank`` registers itself). A spec is resolved once into a ``Plan``
(``plan(spec)``: validated; each stage's method, settings with defaults, calibration set and
library version); ``compress(model, plan, calibration)`` runs it stage by stage (each stage
sees the previous stage's output, and calibration-based stages capture their activations
from the model as it is then) and returns the footprint of the result; a record stores
``plan.settings()``. One way down: parse, resolve, compress, record.
"""

from __future__ import annotations

import dataclasses

import torch

from mpt_core import models, registry
from mpt_core.data import (
    CALIBRATION_SPLITS,
    DOCUMENT_SETS,
    calibration_windows,
    data_dir,
    document_windows,
    load_documents,
    load_text,
    tokenize,
)
from mpt_core.errors import SpecError
from mpt_core.families import PRUNING_FAMILIES
from mpt_core.quant import backends
from mpt_core.spec import Spec, Stage
from mpt_core.storage import Footprint, TensorStorage, dense_numel, measure


def default_calibration_set() -> str:
    """PTB valid offline (the study's Table 3; never an evaluation split), C4 online."""
    return "ptb" if data_dir() is not None else "c4"


class Calibration:
    """Calibration windows for one tokenizer and seqlen, drawn once per setting: C4's from
    its train documents (``data.document_windows``), the others' from their token stream."""

    def __init__(self, tokenizer, seqlen: int, most: int | None = None):
        """``most``: at most this many windows whatever a method asks (a rehearsal's cut)."""
        self.tokenizer = tokenizer
        self.seqlen = seqlen
        self.most = most
        self._ids: dict[str, torch.Tensor] = {}
        self._documents: dict[str, list[str]] = {}
        self._windows: dict[tuple, torch.Tensor] = {}

    def windows(self, settings: dict) -> torch.Tensor:
        dataset = settings.get("calib") or default_calibration_set()
        nsamples = min(settings["nsamples"], self.most or settings["nsamples"])
        key = (dataset, nsamples, settings["seed"])
        if key not in self._windows:
            self._windows[key] = self._draw(*key)
        return self._windows[key]

    def _draw(self, dataset: str, nsamples: int, seed: int) -> torch.Tensor:
        if dataset in DOCUMENT_SETS:
            texts = self._texts(dataset)
            return document_windows(self.tokenizer, texts, nsamples, self.seqlen, seed)
        return calibration_windows(self._stream(dataset), nsamples, self.seqlen, seed)

    def _texts(self, dataset: str) -> list[str]:
        if dataset not in self._documents:
            split = CALIBRATION_SPLITS[dataset]
            self._documents[dataset] = load_documents(dataset, split).texts
        return self._documents[dataset]

    def _stream(self, dataset: str) -> torch.Tensor:
        if dataset not in self._ids:
            text = load_text(dataset, CALIBRATION_SPLITS[dataset])
            self._ids[dataset] = tokenize(self.tokenizer, text)
        return self._ids[dataset]


@dataclasses.dataclass(frozen=True)
class StagePlan:
    """One stage resolved: its method, its options parsed with defaults, the calibration set
    it draws from and the library (with version) that does its work."""

    stage: Stage
    method: registry.Method
    settings: dict  # what the method's apply receives
    calibration_set: str | None  # None: the method needs no calibration
    library: str | None  # "NAME VERSION", None for in-tree code

    @property
    def family(self) -> str:
        """An N:M level makes any pruning method semi-structured."""
        return registry.family_of(self.stage, self.method)

    def record(self) -> dict:
        """What a record stores of this stage."""
        values = dict(self.settings)
        if self.calibration_set is not None:
            values["calib"] = self.calibration_set
        if self.library is not None:
            values["library"] = self.library
        return {"stage": str(self.stage), **values}


@dataclasses.dataclass(frozen=True)
class Plan:
    """A spec validated and resolved once: compression runs from it, records are made from it."""

    spec: Spec
    stages: tuple[StagePlan, ...]

    def settings(self) -> list[dict]:
        return [stage.record() for stage in self.stages]

    def check_model(self, model: str) -> None:
        """Refuse, before ``model`` loads, a model class a stage cannot compress (its
        config says the class: ``models.architecture``); a SpecError of one line."""
        if not any(stage.method.refuses for stage in self.stages):
            return
        architecture = models.architecture(model)
        for stage in self.stages:
            if reason := stage.method.refusal(architecture):
                raise SpecError(f"{stage.stage}: {reason}")


def plan(spec: Spec | Plan) -> Plan:
    """Validate ``spec`` and resolve every stage (SpecError names the bad part); a Plan
    passes through unchanged."""
    if isinstance(spec, Plan):
        return spec
    return Plan(spec, tuple(_plan_stage(stage) for stage in spec.stages))


def _plan_stage(stage: Stage) -> StagePlan:
    method, settings = registry.resolve(stage)
    calibration_set = None
    if method.needs_calibration:
        calibration_set = settings.get("calib") or default_calibration_set()
    library = stage_library(method, settings)
    version = backends.library_version(library) if library is not None else None
    return StagePlan(stage, method, settings, calibration_set, version)


def resolved_settings(spec: Spec) -> list[dict]:
    """Each stage's options with defaults filled in: what a record stores."""
    return plan(spec).settings()


def stage_library(method: registry.Method, values: dict) -> str | None:
    """The library that did a stage's work: its backend option, else the method's own."""
    backend = values.get("backend")
    if backend is not None and backend != backends.IN_TREE:
        return backend
    return method.library


def compress(model, spec: Spec | Plan, calibration: Calibration | None) -> Footprint:
    """Apply ``spec`` to ``model`` in place and return what the result costs to store."""
    resolved = plan(spec)
    reference = dense_numel(model)
    return measure(model, apply_stages(model, resolved.stages, calibration), reference)


def apply_stages(
    model,
    stages: tuple[StagePlan, ...],
    calibration: Calibration | None,
    storage: dict | None = None,
) -> dict[str, TensorStorage]:
    """Apply planned ``stages`` in order; ``storage`` is what earlier stages left (a pipeline
    resumed after its first stage). Returns every compressed tensor's storage."""
    storage = dict(storage or {})
    for planned in stages:
        stage_storage = planned.method.apply(model, planned.stage, planned.settings, calibration)
        if planned.family in PRUNING_FAMILIES:
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
