"""What the harness decides about a baseline row before and around measuring it.

Plain functions of a row (and the options that bear on it), so they are tested without
pytest: why a row cannot be measured here, the protocol it is measured under, the
tolerance its verdict uses, and the dense baseline of its table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mpt_core import baselines, registry
from mpt_core.baselines import BaselineRow
from mpt_core.errors import SpecError
from mpt_core.harness.rehearsal import REHEARSAL_CALIBRATION_SET, REHEARSAL_WINDOWS
from mpt_core.models import study_checkpoint
from mpt_core.pipeline import plan
from mpt_core.protocols import protocol_for
from mpt_core.spec import Spec
from mpt_core.verdict import DEFAULT_RTOL, NOISE_MULTIPLE, Verdict, judge, protocol_of

TOKENS_PER_S_SKIP = (
    "tokens/s rows not comparable: the study measured llama.cpp on its own hardware; "
    "speed is guarded by benchmarks/test_speed_throughput.py (--benchmark-compare-fail)"
)


def skip_reason(row: BaselineRow, rehearsing: bool = False) -> str | None:
    """Why this row cannot be measured here (a rehearsal needs no GPU), or None."""
    import torch

    for method in Spec.parse(row.spec).methods:
        if method not in registry.names():
            return f"method {method} not implemented"
        if hint := registry.get(method).unavailable():
            return hint
    try:
        plan(Spec.parse(row.spec))
    except SpecError as error:  # an option the implementation lacks, a scheme llama.cpp lacks
        return f"spec cannot run: {error}"
    if row.metric == "tokens_per_s":
        return TOKENS_PER_S_SKIP
    if row.metric in baselines.DOWNSTREAM_METRICS:
        from mpt_core.evaluate.zeroshot import INSTALL_HINT, lm_eval_available

        if not lm_eval_available():
            return INSTALL_HINT
    elif row.metric != "ppl":
        return f"metric {row.metric} not implemented"
    if row.tier == "study" and not rehearsing and not torch.cuda.is_available():
        return (
            f"GPU tier: needs a CUDA device and the model {study_checkpoint(row.model)}; "
            "run `pytest benchmarks -m gpu` on a GPU runner"
        )
    return None


def row_protocol(
    row: BaselineRow, windows_option: int | None, rehearse: str | None = None
) -> tuple[str, int, int | None]:
    """(model to load, seqlen, evaluation windows) a row is measured with: its protocol's
    (``protocols.protocol_for``: the study's protocols.toml, or the CPU-tier CSV's header),
    ``--mpt-windows`` overriding the windows. A rehearsal (``rehearse``: the model standing
    in) keeps a study row's seqlen and cuts its windows."""
    protocol = protocol_for(row)
    if rehearse and row.tier == "study":
        return rehearse, protocol.seqlen, windows_option or REHEARSAL_WINDOWS
    model = study_checkpoint(row.model) if row.tier == "study" else row.model
    return model, protocol.seqlen, windows_option or protocol.windows


def row_point(row: BaselineRow, windows_option: int | None) -> tuple[str, int, str, int | None]:
    """The point a row is measured at: (model to load, seqlen, spec, windows). The rows of one
    point are measured on one compressed model."""
    model, seqlen, windows = row_protocol(row, windows_option)
    return model, seqlen, row.spec, windows


def is_measured(row: BaselineRow) -> bool:
    """Whether the harness measures the row anywhere (tokens/s rows it never does)."""
    return row.metric == "ppl" or row.metric in baselines.DOWNSTREAM_METRICS


def tolerance(row: BaselineRow, rtol_option: float | None, noise: float | None = None) -> float:
    """--mpt-rtol if given (0 means 0), else the file's declared ``# rtol:``, else 2%; never
    below ``NOISE_MULTIPLE`` times the point's measured noise floor. An accuracy on a few
    hundred questions moves in steps of one question, so there it is at least one standard
    error of the baseline."""
    rtol = next(value for value in (rtol_option, row.rtol, DEFAULT_RTOL) if value is not None)
    if noise is not None and math.isfinite(noise):
        rtol = max(rtol, NOISE_MULTIPLE * noise)
    stderr = row.stderr if row.stderr is not None and math.isfinite(row.stderr) else 0.0
    if row.metric in baselines.DOWNSTREAM_METRICS and row.value:
        return max(rtol, stderr / row.value)
    return rtol


def judge_row(
    row: BaselineRow,
    record,
    *,
    dense_measured: float | None,
    dense_baseline: float | None,
    baseline_record=None,
    rtol_option: float | None = None,
    noise: float | None = None,
) -> Verdict:
    """A measured record against its baseline row: the row's tolerance (``tolerance``), its
    table's dense values, the footprint of the record the row was written from, and the
    file's recovery gate (``# min_recovery:``, llm-compressor's recovery test)."""
    return judge(
        record,
        row.value,
        rtol=tolerance(row, rtol_option, noise),
        dense_measured=dense_measured,
        dense_baseline=dense_baseline,
        baseline_footprint=baseline_record.footprint if baseline_record else None,
        min_recovery=row.min_recovery,
        noise=noise,
        baseline_protocol=baseline_protocol(row, baseline_record),
        baseline_losses=baseline_record.window_losses if baseline_record else None,
    )


def baseline_protocol(row: BaselineRow, baseline_record=None) -> dict:
    """How the baseline was measured: its record's protocol where the CPU tier keeps one,
    else what its protocol states (``protocols.protocol_for``: evaluation, seqlen, a study
    row's dtype, a CPU-tier file's ``# windows:``)."""
    if baseline_record is not None:
        return protocol_of(baseline_record)
    protocol = protocol_for(row)
    stated = {"evaluation": protocol.evaluation, "seqlen": protocol.seqlen}
    if row.tier == "study":
        stated["dtype"] = protocol.dtype
    if row.metric == "ppl" and row.tier == "cpu":
        stated["windows"] = row.windows
    return stated


@dataclass(frozen=True)
class MeasuredPoint:
    """How a row's point is measured, in full: the rows of one MeasuredPoint share one
    compressed model (``state.MptState``)."""

    model: str  # what is loaded (a rehearsal's stand-in)
    seqlen: int
    dtype: object  # a torch dtype; None: the device's default
    spec: str
    windows: int | None
    evaluation: str  # windowed | llama-perplexity | lm-eval
    defaults: tuple  # the protocol's stage defaults (pipeline.plan), as sorted items

    def plan(self):
        return plan(Spec.parse(self.spec), dict(self.defaults))


@dataclass(frozen=True)
class Overrides:
    """What the command line sets for every row instead of its protocol: ``--mpt-seqlen``,
    ``--mpt-dtype``, ``--mpt-calib-nsamples``. Each lands in the record (its seqlen, dtype,
    settings), so the verdict then says ``protocol differs``, never judges across it."""

    seqlen: int | None = None
    dtype: str | None = None
    calib_nsamples: int | None = None

    @classmethod
    def from_options(cls, getoption) -> Overrides:
        return cls(
            getoption("--mpt-seqlen"), getoption("--mpt-dtype"), getoption("--mpt-calib-nsamples")
        )


def measured_point(
    row: BaselineRow,
    windows_option: int | None,
    rehearse: str | None,
    spec: str | None = None,
    overrides: Overrides | None = None,
) -> MeasuredPoint:
    """The point ``row`` (or ``spec`` under the row's protocol) is measured at: its
    protocol's model, seqlen, windows, evaluation and, for a study row, dtype and calibration
    defaults (a rehearsal: the stand-in model, on the CPU in fp32, calibrated on the CPU
    tier's set with the protocol's count, length and seed); ``overrides`` win over all."""
    import torch

    overrides = overrides or Overrides()
    model, seqlen, windows = row_protocol(row, windows_option, rehearse)
    protocol = protocol_for(row)
    dtype = getattr(torch, protocol.dtype) if row.tier == "study" else None
    if rehearse and not torch.cuda.is_available():
        dtype = None  # fp16 matrix products are emulated on the CPU, and far slower
    defaults = protocol.stage_defaults() if row.tier == "study" else {}
    if rehearse and defaults.get("calib"):
        defaults |= dict(zip(("calib", "calib_split"), REHEARSAL_CALIBRATION_SET, strict=True))
    if overrides.calib_nsamples is not None:
        defaults["nsamples"] = overrides.calib_nsamples
    if overrides.dtype is not None:
        dtype = getattr(torch, overrides.dtype)
    return MeasuredPoint(
        model,
        overrides.seqlen or seqlen,
        dtype,
        spec or row.spec,
        windows,
        protocol.evaluation,
        tuple(sorted(defaults.items())),
    )


class DenseBaselines:
    """The dense baseline of each (tier, table, model, dataset, metric), indexed once."""

    def __init__(self, rows: list[BaselineRow]):
        self._values: dict[tuple, float | None] = {}
        for row in rows:
            if row.spec == "dense":
                self._values.setdefault(self._key(row), row.value)

    @staticmethod
    def _key(row: BaselineRow) -> tuple:
        return (row.tier, row.table, row.model, row.dataset, row.metric)

    def of(self, row: BaselineRow) -> float | None:
        return self._values.get(self._key(row))
