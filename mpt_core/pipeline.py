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
from mpt_core.errors import ModelError, SpecError
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
        self._ids: dict[tuple[str, str], torch.Tensor] = {}
        self._documents: dict[tuple[str, str], list[str]] = {}
        self._windows: dict[tuple, torch.Tensor] = {}

    def windows(self, settings: dict) -> torch.Tensor:
        dataset = settings.get("calib") or default_calibration_set()
        nsamples = min(settings["nsamples"], self.most or settings["nsamples"])
        length = settings.get("calib_length") or self.seqlen
        split = settings.get("calib_split") or CALIBRATION_SPLITS[dataset]
        key = (dataset, split, nsamples, settings["seed"], length)
        if key not in self._windows:
            self._windows[key] = self._draw(*key)
        return self._windows[key]

    def _draw(self, dataset: str, split: str, nsamples: int, seed: int, length: int):
        if dataset in DOCUMENT_SETS:
            texts = self._texts(dataset, split)
            return document_windows(self.tokenizer, texts, nsamples, length, seed)
        return calibration_windows(self._stream(dataset, split), nsamples, length, seed)

    def _texts(self, dataset: str, split: str) -> list[str]:
        if (dataset, split) not in self._documents:
            self._documents[dataset, split] = load_documents(dataset, split).texts
        return self._documents[dataset, split]

    def _stream(self, dataset: str, split: str) -> torch.Tensor:
        if (dataset, split) not in self._ids:
            text = load_text(dataset, split)
            self._ids[dataset, split] = tokenize(self.tokenizer, text)
        return self._ids[dataset, split]


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


def plan(spec: Spec | Plan, defaults: dict | None = None) -> Plan:
    """Validate ``spec`` and resolve every stage (SpecError names the bad part); a Plan
    passes through unchanged. ``defaults`` (``Protocol.stage_defaults``: a study row's
    protocol) replace the methods' own defaults for what the spec does not state."""
    if isinstance(spec, Plan):
        return spec
    return Plan(spec, tuple(_plan_stage(stage, defaults or {}) for stage in spec.stages))


def _plan_stage(stage: Stage, defaults: dict) -> StagePlan:
    method, settings = registry.resolve(stage)
    settings = _protocol_settings(stage, method, settings, defaults)
    calibration_set = None
    if method.needs_calibration:
        calibration_set = settings.get("calib") or default_calibration_set()
    library = stage_library(method, settings)
    version = backends.library_version(library) if library is not None else None
    return StagePlan(stage, method, settings, calibration_set, version)


def _protocol_settings(stage: Stage, method, settings: dict, defaults: dict) -> dict:
    """``settings`` with the protocol's value of each option the stage leaves unstated: the
    calibration (set and window length for any calibrated method; count and seed where the
    method takes them) and the group size of GPTQ and AWQ."""
    stated = {key for key, _ in stage.options}
    chosen = dict(settings)
    wanted = {
        "nsamples": defaults.get("nsamples"),
        "seed": defaults.get("seed"),
        "group": defaults.get(f"{method.name}_group"),
    }
    for key, value in wanted.items():
        if value is not None and key in method.options and key not in stated:
            chosen[key] = value
    if method.needs_calibration and "calib" not in stated and defaults.get("calib"):
        chosen["calib"] = defaults["calib"]
        chosen["calib_split"] = defaults.get("calib_split")
        chosen["calib_length"] = defaults.get("calib_length")
    return chosen


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
        check_names(model, planned.stage, stage_storage)
        if planned.family in PRUNING_FAMILIES:
            stage_storage = {
                k: dataclasses.replace(v, sparse=True) for k, v in stage_storage.items()
            }
        storage = merge_storage(storage, stage_storage)
    return storage


def check_names(model, stage: Stage, storage: dict[str, TensorStorage]) -> None:
    """A method's storage names parameters of the model it compressed. One that names others
    spelled a layout this model lacks (the blocks as ``model.layers`` in a model that nests
    its text decoder, as Gemma-3 4B/12B/27B do): its footprint would silently count nothing."""
    parameters = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    unknown = sorted(set(storage) - parameters)
    if unknown:
        raise ModelError(
            f"{stage}: cannot compress {type(model).__name__}: it names {len(unknown)} "
            f"tensor(s) the model does not have, e.g. {unknown[0]}"
        )


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
