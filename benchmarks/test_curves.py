"""Curve tests: one per baseline curve, failing when its phase-transition point moves."""


def test_ptp(mpt_curve, mpt_measure_curve):
    verdict = mpt_measure_curve(mpt_curve)
    assert verdict.passed, verdict.message
