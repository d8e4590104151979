"""One measurement: restore the model, compress it by a spec, evaluate, make a Record.

A ``Session`` holds what is loaded once and reused across points: the model
with its Snapshot, the tokenized evaluation streams and the calibration windows.
The CLI's run and sweep and the pytest plugin all measure through it.
"""

from __future__ import annotations

import time

import torch

from mpt_core.compress import Calibration, compress, resolved_settings
from mpt_core.data import load_text, tokenize
from mpt_core.evaluate.perplexity import eval_windows, perplexity
from mpt_core.models import LoadedModel, Snapshot, load_model
from mpt_core.registry import validate
from mpt_core.results import Record, git_sha, library_versions, now
from mpt_core.spec import Spec


class Session:
    """A model loaded once, restored to its original weights before every point."""

    def __init__(self, loaded: LoadedModel, seqlen: int):
        self.loaded = loaded
        self.seqlen = seqlen
        self.snapshot = Snapshot(loaded.model)
        self.calibration = Calibration(loaded.tokenizer, seqlen)
        self._eval: dict[str, tuple[torch.Tensor, dict]] = {}

    @classmethod
    def open(
        cls, model: str, seqlen: int, device: str | None = None, dtype: torch.dtype | None = None
    ) -> Session:
        return cls(load_model(model, device, dtype), seqlen)

    def eval_stream(self, dataset: str) -> tuple[torch.Tensor, dict]:
        """Token ids of the dataset's test split, and its fingerprint (cached)."""
        if dataset not in self._eval:
            text = load_text(dataset, "test")
            self._eval[dataset] = (
                tokenize(self.loaded.tokenizer, text, self.seqlen),
                text.fingerprint(),
            )
        return self._eval[dataset]

    def measure(self, spec: Spec, dataset: str, windows: int | None = None) -> Record:
        """Compress a fresh copy of the model by ``spec`` and measure its perplexity."""
        return self.measure_datasets(spec, [dataset], windows)[0]

    def measure_datasets(
        self, spec: Spec, datasets: list[str], windows: int | None = None
    ) -> list[Record]:
        """Compress once by ``spec`` and measure perplexity on each dataset: calibrated
        methods cost minutes on a CPU, so a grid never compresses twice for one point."""
        validate(spec)
        streams = [self.eval_stream(dataset) for dataset in datasets]
        try:
            started = time.perf_counter()
            footprint = compress(self.loaded.model, spec, self.calibration)
            compress_seconds = time.perf_counter() - started
            records = []
            for dataset, (ids, fingerprint) in zip(datasets, streams, strict=True):
                started = time.perf_counter()
                result = perplexity(self.loaded.model, ids, self.seqlen, windows)
                seconds = {"compress": compress_seconds, "evaluate": time.perf_counter() - started}
                records.append(self._record(spec, dataset, fingerprint, result, footprint, seconds))
        finally:
            self.snapshot.restore(self.loaded.model)
        return records

    def _record(self, spec, dataset, fingerprint, result, footprint, seconds) -> Record:
        return Record(
            model=self.loaded.name,
            weights_hash=self.loaded.weights_hash,
            spec=str(spec),
            dataset=dataset,
            seqlen=self.seqlen,
            windows=result.windows,
            metric="ppl",
            value=result.ppl,
            stderr=result.stderr,
            footprint=footprint.summary(),
            seconds=seconds,
            device=str(self.loaded.device),
            dtype=str(self.loaded.dtype).removeprefix("torch."),
            fingerprint=fingerprint,
            settings=resolved_settings(spec),
            versions=library_versions(),
            git_sha=git_sha(),
            created=now(),
        )

    def windows_for(self, dataset: str, windows: int | None) -> int:
        """How many windows a measurement of ``dataset`` will use (for resume keys)."""
        ids, _ = self.eval_stream(dataset)
        return eval_windows(ids, self.seqlen, windows).shape[0]
