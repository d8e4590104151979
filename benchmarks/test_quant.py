"""Regression points of the quant family, one test per baseline row (mpt_core.harness)."""

MPT_FAMILIES = ("quant",)


def test_ppl(mpt_row, mpt_check):
    mpt_check(mpt_row)
