"""The fixtures benchmark modules call: measure a row or a curve, get its verdict."""

from __future__ import annotations

import pytest

from mpt_core import baselines
from mpt_core.baselines import BaselineRow
from mpt_core.errors import DataError, ModelError, SpecError
from mpt_core.harness import policy, rehearsal
from mpt_core.harness.curve_check import CurveVerdict, check_curve
from mpt_core.harness.curve_rows import BaselineCurve
from mpt_core.harness.state import MptState
from mpt_core.verdict import Verdict


def _state(request) -> MptState:
    return request.config.pluginmanager.get_plugin("mpt-state")


def measure_row(state: MptState, config, row: BaselineRow, spec: str | None = None):
    """The record of ``row`` (or of ``spec`` under row's protocol); skips with one line
    when the method, metric, device, model or data is missing."""
    rehearse = _rehearsing(config, row)
    reason = policy.skip_reason(row, rehearsing=bool(rehearse))
    if reason:
        pytest.skip(reason)
    overrides = policy.Overrides.from_options(config.getoption)
    windows = config.getoption("--mpt-windows")
    point = policy.measured_point(row, windows, rehearse, spec, overrides)
    try:
        if row.metric in baselines.DOWNSTREAM_METRICS:
            limit = rehearsal.REHEARSAL_QUESTIONS if rehearse else row.limit
            return state.measure_accuracy(point, row.dataset, limit, row.metric)
        return state.measure(point, row.dataset)
    except (DataError, ModelError) as error:
        pytest.skip(f"missing input: {error}")
    except SpecError as error:
        if not rehearse:
            raise
        pytest.skip(f"not rehearsable on {point.model}: {error}")


def _rehearsing(config, row: BaselineRow) -> str | None:
    """The model standing in for a study row's in a rehearsal, else None."""
    return rehearsal.rehearsal_model(config) if row.tier == "study" else None


def _end_rehearsal(config, row: BaselineRow) -> None:
    """A rehearsed study row ends here, with the protocol it ran under, not a verdict."""
    rehearse = _rehearsing(config, row)
    if rehearse:
        model, seqlen, windows = policy.row_protocol(
            row, config.getoption("--mpt-windows"), rehearse
        )
        pytest.skip(rehearsal.rehearsed(row, model, seqlen, windows))


def judge_row(state: MptState, config, row: BaselineRow) -> Verdict:
    """Measure ``row`` and dense under its protocol and judge the point (value, regime,
    recovery, footprint) with ``policy.judge_row``; the outcome is kept for the report."""
    record = measure_row(state, config, row)
    dense = measure_row(state, config, row, "dense")
    verdict = policy.judge_row(
        row,
        record,
        dense_measured=dense.value,
        dense_baseline=state.dense_baselines.of(row),
        baseline_record=state.baseline_records.of(row),
        rtol_option=config.getoption("--mpt-rtol"),
        noise=state.noise_floors.of(row),
    )
    _end_rehearsal(config, row)
    state.keep_verdict(row, record, verdict)
    return verdict


@pytest.fixture
def mpt_measure(request):
    """Measure a baseline row (restored model, same protocol) and return its Verdict."""
    state, config = _state(request), request.config
    return lambda row: judge_row(state, config, row)


@pytest.fixture
def mpt_check(request):
    """Measure a baseline row and fail the test with the verdict's one-line message."""
    state, config = _state(request), request.config

    def check_row(row: BaselineRow) -> Verdict:
        verdict = judge_row(state, config, row)
        if not verdict.passed:
            pytest.fail(f"{row.test_id}: {verdict.message}", pytrace=False)
        return verdict

    return check_row


@pytest.fixture
def mpt_measure_curve(request):
    """Measure every point of a baseline curve and return the CurveVerdict of its PTP."""
    state, config = _state(request), request.config

    def measure(curve: BaselineCurve) -> CurveVerdict:
        measured = [measure_row(state, config, row).value for row in curve.rows]
        verdict = check_curve(
            curve.label,
            (curve.x, [row.value for row in curve.rows]),
            (curve.x, measured),
            ptp_tol=config.getoption("--mpt-ptp-tol"),
        )
        _end_rehearsal(config, curve.rows[-1])
        return verdict

    return measure
