"""Noise floors: how far a point moves when only float order changes.

A library update changes float order too, and so do the thread count and the calibration
batch: near-ties in a mask flip, a GPTQ column rounds the other way. ``measure_noise``
re-measures every point of a CPU-tier baseline file under each perturbation (threads 1
and 2, calibration batch 1 and 8: the engine's ``CALIBRATION_BATCH``) and keeps the
spread, (max − min) / |baseline| over the baseline and every perturbed value. The
verdict's tolerance is never below ``verdict.NOISE_MULTIPLE`` times it
(``mpt_core.harness.policy.tolerance``); a point whose spread passes ``verdict.CHAOTIC`` is named
chaotic in the report rather than crying wolf (both numbers live in ``mpt_core.verdict``).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from mpt_core.baselines import NOISE_HEADER, BaselineRow, load_file, noise_path, read_noise
from mpt_core.engine import layerwise
from mpt_core.records import now
from mpt_core.spec import Spec

PERTURBATIONS = ((1, 8), (2, 8), (1, 1), (2, 1))  # (threads, calibration batch)


@contextmanager
def perturbed(threads: int, batch: int) -> Iterator[None]:
    """Run the block with ``threads`` torch threads and calibration batches of ``batch``."""
    saved_threads, saved_batch = torch.get_num_threads(), layerwise.CALIBRATION_BATCH
    torch.set_num_threads(threads)
    layerwise.CALIBRATION_BATCH = batch
    try:
        yield
    finally:
        torch.set_num_threads(saved_threads)
        layerwise.CALIBRATION_BATCH = saved_batch


def spread(baseline: float, values: list[float]) -> float:
    """(max − min) / |baseline| over the baseline and the perturbed values; inf where any
    is not finite and they are not all the same."""
    every = [baseline, *values]
    if not all(math.isfinite(value) for value in every):
        return 0.0 if len({str(value) for value in every}) == 1 else math.inf
    return (max(every) - min(every)) / abs(baseline) if baseline else math.inf


def measure_noise(session, csv_path: Path, windows: int | None, keep=lambda row: True) -> Path:
    """Measure each point of ``csv_path`` that ``keep`` selects under every perturbation
    and write its noise file; rows measured before keep their lines (resumable)."""
    rows = [row for row in load_file(csv_path, "cpu") if row.metric == "ppl"]
    path = noise_path(csv_path)
    values = _read_values(path)
    todo = [row for row in rows if keep(row) and _key(row) not in values]
    for spec in dict.fromkeys(row.spec for row in todo):
        datasets = sorted({row.dataset for row in todo if row.spec == spec})
        found: dict[tuple, list[float]] = {}
        for threads, batch in PERTURBATIONS:
            with perturbed(threads, batch):
                records = session.measure_datasets(Spec.parse(spec), datasets, windows)
            for record in records:
                found.setdefault((record.model, record.dataset, spec, "ppl"), []).append(
                    record.value
                )
        values |= found
        path.write_text(noise_text(rows, values), encoding="utf-8")
    return path


def _read_values(path: Path) -> dict[tuple, list[float]]:
    return {key: values for key, (_, values) in read_noise(path).items()} if path.is_file() else {}


def noise_text(rows: list[BaselineRow], values: dict[tuple, list[float]]) -> str:
    buffer = io.StringIO()
    buffer.write(
        f"# noise: each point re-measured with (threads, calibration batch) in {PERTURBATIONS}\n"
        f"# spread: (max - min) / |baseline| over the baseline and those values\n"
        f"# date: {now()}\n"
    )
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(NOISE_HEADER)
    for row in rows:
        if _key(row) not in values:
            continue
        measured = values[_key(row)]
        cells = " ".join(f"{value:.6g}" for value in measured)
        writer.writerow([*_key(row), f"{spread(row.value, measured):.3g}", cells])
    return buffer.getvalue()


def _key(row: BaselineRow) -> tuple:
    return (row.model, row.dataset, row.spec, row.metric)
