"""Regression points of the downstream family, one test per baseline row (see pytest_plugin)."""

MPT_FAMILIES = ("downstream", "speed")


def test_metric(mpt_row, mpt_measure):
    verdict = mpt_measure(mpt_row)
    assert verdict.passed, verdict.message
