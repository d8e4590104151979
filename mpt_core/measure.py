"""One measurement: restore the model, compress it by a spec, evaluate, make a Record.

A ``Session`` holds what is loaded once and reused across points: the model
with its Snapshot, the tokenized evaluation streams and the calibration windows.
The CLI's run and sweep and the pytest plugin all measure through it.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from mpt_core.data import load_text, tokenize
from mpt_core.evaluate.perplexity import eval_windows, llama_perplexity, perplexity
from mpt_core.models import LoadedModel, load_model
from mpt_core.pipeline import Calibration, Plan, apply_stages, plan
from mpt_core.records import PointKey, Record, git_sha, library_versions, now, point_key, setup_key
from mpt_core.snapshot import Snapshot
from mpt_core.spec import Spec
from mpt_core.storage import Footprint, dense_numel, measure


@dataclass
class FirstStage:
    """The model right after a pipeline's first stage, and what that stage stored."""

    stage: str
    snapshot: Snapshot
    storage: dict


class Session:
    """A model loaded once, restored to its original weights before every point.

    Pipelines reuse the model after their first stage when the previous pipeline
    began with the same stage: a grid such as ``wanda:0.3+gguf:{Q2_K..Q8_0}`` prunes
    once. Methods are deterministic for fixed settings, so this changes no number.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        seqlen: int,
        snapshot: Snapshot | None = None,
        calibration_most: int | None = None,
    ):
        """``snapshot``: the model's snapshot when another session of the same model (at
        another seqlen) already holds one, so a model is copied to host memory once;
        ``calibration_most``: a cap on calibration windows (a rehearsal's)."""
        self.loaded = loaded
        self.seqlen = seqlen
        self.snapshot = snapshot or Snapshot(loaded.model)
        self.dense_numel = dense_numel(loaded.model)
        self.calibration = Calibration(loaded.tokenizer, seqlen, calibration_most)
        self._eval: dict[str, tuple[torch.Tensor, dict]] = {}
        self._first_stage: FirstStage | None = None

    @classmethod
    def open(
        cls,
        model: str,
        seqlen: int,
        device: str | None = None,
        dtype: torch.dtype | None = None,
        device_map: str | None = None,
    ) -> Session:
        return cls(load_model(model, device, dtype, device_map), seqlen)

    def eval_stream(self, dataset: str) -> tuple[torch.Tensor, dict]:
        """Token ids of the dataset's test split, and its fingerprint (cached)."""
        if dataset not in self._eval:
            text = load_text(dataset, "test")
            self._eval[dataset] = (
                tokenize(self.loaded.tokenizer, text, self.seqlen),
                text.fingerprint(),
            )
        return self._eval[dataset]

    def measure(
        self,
        spec: Spec | Plan,
        dataset: str,
        windows: int | None = None,
        on_compressed: Callable[[LoadedModel], None] | None = None,
    ) -> Record:
        """Compress a fresh copy of the model by ``spec`` and measure its perplexity;
        ``on_compressed`` is called with the compressed model before it is evaluated
        (``mpt run --save`` writes it there)."""
        return self.measure_datasets(spec, [dataset], windows, on_compressed=on_compressed)[0]

    def measure_datasets(
        self,
        spec: Spec | Plan,
        datasets: list[str],
        windows: int | None = None,
        evaluation: str = "windowed",
        on_compressed: Callable[[LoadedModel], None] | None = None,
    ) -> list[Record]:
        """Compress once by ``spec`` and measure perplexity on each dataset: calibrated
        methods cost minutes on a CPU, so a grid never compresses twice for one point.
        The spec is resolved once (``pipeline.plan``); compression and records use that.
        ``evaluation``: ``windowed`` (non-overlapping windows of seqlen) or
        ``llama-perplexity`` (llama.cpp's protocol, seqlen its context). ``on_compressed``:
        called with the compressed model before the evaluation."""
        resolved = plan(spec)
        streams = [self.eval_stream(dataset) for dataset in datasets]
        reset_peak_memory(self.loaded.device)
        try:
            started = time.perf_counter()
            footprint = self._compress(resolved)
            compress_seconds = time.perf_counter() - started
            if on_compressed is not None:
                on_compressed(self.loaded)
            records = []
            for dataset, (ids, fingerprint) in zip(datasets, streams, strict=True):
                started = time.perf_counter()
                result = self._perplexity(ids, windows, evaluation)
                seconds = {"compress": compress_seconds, "evaluate": time.perf_counter() - started}
                records.append(
                    self._record(
                        resolved,
                        footprint,
                        seconds,
                        dataset=dataset,
                        windows=result.windows,
                        metric="ppl",
                        value=result.ppl,
                        stderr=result.stderr,
                        fingerprint=fingerprint,
                        versions=library_versions(),
                        window_losses=list(result.window_losses),
                        evaluation=evaluation,
                        memory=peak_memory(self.loaded.device),
                    )
                )
        finally:
            self.snapshot.restore(self.loaded.model)
        return records

    def _perplexity(self, ids: torch.Tensor, windows: int | None, evaluation: str):
        if evaluation == "windowed":
            return perplexity(self.loaded.model, ids, self.seqlen, windows)
        if evaluation == "llama-perplexity":
            bos = added_bos(self.loaded.tokenizer)
            return llama_perplexity(self.loaded.model, ids, self.seqlen, bos, windows)
        raise ValueError(f"evaluation {evaluation!r}: windowed or llama-perplexity")

    def _compress(self, resolved: Plan) -> Footprint:
        if len(resolved.stages) < 2:
            storage = apply_stages(self.loaded.model, resolved.stages, self.calibration)
        else:
            first, rest = resolved.stages[0], resolved.stages[1:]
            storage = self._after_first_stage(first)
            storage = apply_stages(self.loaded.model, rest, self.calibration, storage)
        return measure(self.loaded.model, storage, self.dense_numel)

    def _after_first_stage(self, first) -> dict:
        """Bring the (dense) model to its state after ``first``, computed once per stage."""
        cached = self._first_stage
        if cached is not None and cached.stage == str(first.stage):
            cached.snapshot.restore(self.loaded.model)
            return cached.storage
        self._first_stage = None  # its snapshot holds a whole model: free it first
        storage = apply_stages(self.loaded.model, (first,), self.calibration)
        self._first_stage = FirstStage(str(first.stage), Snapshot(self.loaded.model), storage)
        return storage

    def _record(self, resolved: Plan, footprint: Footprint, seconds: dict, **point) -> Record:
        """A record of this session's model compressed by ``resolved``; ``point`` holds what
        the evaluation measured (dataset, windows, metric, value, stderr, fingerprint,
        versions)."""
        return Record(
            **self._identity(),
            spec=str(resolved.spec),
            footprint=footprint.summary(),
            settings=resolved.settings(),
            git_sha=git_sha(),
            created=now(),
            seconds=seconds,
            **point,
        )

    def _identity(self) -> dict:
        """What every record of this session says about the model as loaded and run."""
        return {
            "model": self.loaded.name,
            "weights_hash": self.loaded.weights_hash,
            "seqlen": self.seqlen,
            "device": str(self.loaded.device),
            "dtype": str(self.loaded.dtype).removeprefix("torch."),
        }

    @property
    def setup(self) -> tuple:
        """``PointKey.setup`` of every record this session makes."""
        return setup_key(**self._identity())

    def point_key(self, spec: str, dataset: str, windows: int | None) -> PointKey:
        """The key the perplexity record of ``spec`` on ``dataset`` will carry: what a
        resumed sweep looks for in its ``--out``."""
        return point_key(
            **self._identity(),
            spec=spec,
            dataset=dataset,
            windows=self.windows_for(dataset, windows),
            metric="ppl",
        )

    def windows_for(self, dataset: str, windows: int | None) -> int:
        """How many windows a measurement of ``dataset`` will use (for resume keys)."""
        ids, _ = self.eval_stream(dataset)
        return eval_windows(ids, self.seqlen, windows).shape[0]

    @contextmanager
    def compressed(self, spec: Spec | Plan) -> Iterator[tuple[Footprint, float]]:
        """The model compressed by ``spec`` inside the block, with its footprint and the
        seconds compression took; restored to the original weights after it."""
        resolved = plan(spec)
        try:
            started = time.perf_counter()
            footprint = self._compress(resolved)
            yield footprint, time.perf_counter() - started
        finally:
            self.snapshot.restore(self.loaded.model)

    def measure_tasks(
        self,
        spec: Spec | Plan,
        limits: dict[str, int | None],
        on_compressed: Callable[[LoadedModel], None] | None = None,
    ) -> list[Record]:
        """Compress once by ``spec`` and score each task through lm-eval
        (``mpt_core.evaluate.zeroshot``); ``limits`` maps a task to its lm-eval limit (None:
        every question). One record per task and metric, its ``windows`` the questions
        scored and its ``seqlen`` the calibration seqlen. ``on_compressed``: called with the
        compressed model before the tasks are scored."""
        from mpt_core.evaluate import zeroshot
        from mpt_core.evaluate.tasks import fingerprint

        zeroshot.require_lm_eval()
        zeroshot.check_tasks(list(limits))
        resolved = plan(spec)
        records = []
        with self.compressed(resolved) as (footprint, compress_seconds):
            if on_compressed is not None:
                on_compressed(self.loaded)
            for task, limit in limits.items():
                started = time.perf_counter()
                scores = zeroshot.evaluate(self.loaded.model, self.loaded.tokenizer, [task], limit)
                seconds = {"compress": compress_seconds, "evaluate": time.perf_counter() - started}
                source = fingerprint(task) | {"limit": limit}
                records += [
                    self._record(
                        resolved,
                        footprint,
                        seconds,
                        dataset=score.task,
                        windows=score.samples,
                        metric=score.metric,
                        value=score.value,
                        stderr=score.stderr,
                        fingerprint=source
                        | {"num_fewshot": score.num_fewshot, "max_length": score.max_length},
                        versions=library_versions() | {"lm-eval": zeroshot.lm_eval_version()},
                        memory=peak_memory(self.loaded.device),
                    )
                    for score in scores
                ]
        return records


def added_bos(tokenizer) -> int | None:
    """The BOS id the tokenizer puts before a text (llama.cpp's ``add_bos``), or None."""
    bos = tokenizer.bos_token_id
    return bos if bos is not None and tokenizer("a").input_ids[:1] == [bos] else None


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict[str, int]:
    """The process's peak resident set and, on CUDA, the peak of allocated device memory
    since ``reset_peak_memory``: what a measurement needed."""
    peak = {"host_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if device.type == "cuda":
        peak["device_peak_bytes"] = torch.cuda.max_memory_allocated(device)
    return peak
