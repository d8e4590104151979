"""Regression points of the quant family, one test per baseline row (mpt_core.harness)."""

MPT_FAMILIES = ("quant",)


def test_ppl(mpt_row, mpt_measure):
    verdict = mpt_measure(mpt_row)
    assert verdict.passed, verdict.message
