"""A rehearsal of the study tier on a small model, on any machine (``--mpt-rehearse MODEL``).

Each study row runs its own code path — its protocol's seqlen, the loader, its method with
its calibration, the evaluation, the record and the verdict — with the study's model
replaced by MODEL (``tiny-llama``, ``smollm2-135m`` or a local checkpoint), and ends
``skipped: rehearsed`` with the protocol it ran under instead of a verdict on the value: a
small model's numbers say nothing about the study's. A row that would crash on a GPU runner
for a reason other than CUDA itself crashes here first. To cost seconds a row, the
evaluation is cut to ``REHEARSAL_WINDOWS`` windows, calibration to
``REHEARSAL_CALIBRATION`` windows drawn from the CPU tier's text (the study's C4 shard and
train splits are the GPU runner's data) and an accuracy row to ``REHEARSAL_QUESTIONS``
questions.
A ratio the small model cannot reach (a structured cut of 60% of two blocks) is skipped with
the method's one-line reason. On a GPU the dtype is the row's protocol's (fp16; Gemma-3
bf16); on the CPU, where fp16 matrix products are emulated and far slower, fp32 (every
method's fp16 path is tested on the CPU by ``tests/test_foreign_device.py``).

With ``--mpt-smoke`` (what CI runs) a deterministic sample is rehearsed: in node-id order,
each test that brings a table, method, metric or test function not yet covered.
"""

from __future__ import annotations

from collections.abc import Callable

from mpt_core.baselines import BaselineRow
from mpt_core.protocols import protocol_for
from mpt_core.spec import Spec

REHEARSAL_WINDOWS = 2
REHEARSAL_QUESTIONS = 4
REHEARSAL_CALIBRATION = 4
# the calibration text a rehearsal draws from, whatever the protocol names: the CPU tier's,
# which every checkout's data has (the study's C4 shard and train splits are GPU-runner data)
REHEARSAL_CALIBRATION_SET = ("ptb", "validation")


def rehearsal_model(config) -> str | None:
    """The model standing in for the study's, or None when this is not a rehearsal."""
    return config.getoption("--mpt-rehearse")


def rehearsed(row: BaselineRow, model: str, seqlen: int, windows: int | None) -> str:
    """The one-line outcome of a rehearsed row: what it ran under and its table's protocol."""
    protocol = protocol_for(row)
    evaluation = protocol.evaluation + (f"[ctx={protocol.ctx}]" if protocol.ctx else "")
    return (
        f"rehearsed: {row.table} {row.model} as {model}: {evaluation}, seqlen {seqlen}, "
        f"{'all' if windows is None else windows} windows, {protocol.dtype} on a GPU, "
        f"calibration {protocol.calib_set} {protocol.calib_nsamples or 'default'}x"
        f"{protocol.calib_length or seqlen} (rehearsed on {' '.join(REHEARSAL_CALIBRATION_SET)}"
        f"), {row.metric}"
    )


def sample(
    items,
    rows_of: Callable[[object], list[BaselineRow]],
    rehearsable: Callable[[BaselineRow], bool],
) -> set[str]:
    """Node ids of a deterministic sample of the study rows and curves in ``items`` (``rows_of``
    a test: ``collection.item_rows``): each one whose rows are all ``rehearsable`` (not skipped
    before they run) and that covers a table, method, metric or test function not covered
    before it."""
    covered: set[tuple] = set()
    kept: set[str] = set()
    for item in sorted(items, key=lambda item: item.nodeid):
        rows = [row for row in rows_of(item) if row.tier == "study"]
        if not rows or not all(rehearsable(row) for row in rows):
            continue
        aspects = {("test", item.originalname)} | {
            aspect for row in rows for aspect in _aspects(row)
        }
        if not aspects <= covered:
            covered |= aspects
            kept.add(item.nodeid)
    return kept


def _aspects(row: BaselineRow) -> set[tuple]:
    methods = {("method", method) for method in Spec.parse(row.spec).methods}
    return methods | {("table", row.table), ("metric", row.metric)}
