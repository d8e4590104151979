"""The fixtures benchmark modules call: measure a row or a curve, get its verdict."""

from __future__ import annotations

import pytest

from mpt_core import baselines
from mpt_core.baselines import BaselineRow
from mpt_core.errors import DataError, ModelError
from mpt_core.harness import collection, policy
from mpt_core.harness.curve_check import CurveVerdict, check_curve
from mpt_core.harness.curve_rows import BaselineCurve
from mpt_core.harness.state import MptState
from mpt_core.harness.verdict import Verdict, check
from mpt_core.reporting.report import Cell

_DENSE = pytest.StashKey[policy.DenseBaselines]()


def _state(request) -> MptState:
    return request.config.pluginmanager.get_plugin("mpt-state")


def dense_baselines(config) -> policy.DenseBaselines:
    """The dense baseline index of the session's rows, built once."""
    if _DENSE not in config.stash:
        config.stash[_DENSE] = policy.DenseBaselines(collection.rows(config))
    return config.stash[_DENSE]


def measure_row(state: MptState, config, row: BaselineRow, spec: str | None = None):
    """The record of ``row`` (or of ``spec`` under row's protocol); skips with one line
    when the method, metric, device, model or data is missing."""
    reason = policy.skip_reason(row)
    if reason:
        pytest.skip(reason)
    model, seqlen, windows = policy.row_protocol(row, config.getoption("--mpt-windows"))
    spec = spec or row.spec
    try:
        if row.metric in baselines.DOWNSTREAM_METRICS:
            return state.measure_accuracy(model, seqlen, spec, row.dataset, row.limit, row.metric)
        return state.measure(model, seqlen, spec, row.dataset, windows)
    except (DataError, ModelError) as error:
        pytest.skip(f"missing input: {error}")


@pytest.fixture
def mpt_measure(request):
    """Measure a baseline row (restored model, same protocol) and return its Verdict."""
    state, config = _state(request), request.config

    def measure(row: BaselineRow) -> Verdict:
        record = measure_row(state, config, row)
        dense = measure_row(state, config, row, "dense")
        verdict = check(
            record.value,
            row.value,
            rtol=policy.tolerance(row, config.getoption("--mpt-rtol")),
            dense_measured=dense.value,
            dense_baseline=dense_baselines(config).of(row),
        )
        cell = Cell(
            row.model, row.dataset, row.spec, row.metric, record.value, row.value, verdict.passed
        )
        state.cells.append(cell)
        state.measured_rows.append((row, record))
        return verdict

    return measure


@pytest.fixture
def mpt_measure_curve(request):
    """Measure every point of a baseline curve and return the CurveVerdict of its PTP."""
    state, config = _state(request), request.config

    def measure(curve: BaselineCurve) -> CurveVerdict:
        measured = [measure_row(state, config, row).value for row in curve.rows]
        return check_curve(
            curve.label,
            (curve.x, [row.value for row in curve.rows]),
            (curve.x, measured),
            ptp_tol=config.getoption("--mpt-ptp-tol"),
        )

    return measure
