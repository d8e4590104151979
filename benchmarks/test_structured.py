"""Regression points of the structured family, one test per baseline row (mpt_core.harness)."""

MPT_FAMILIES = ("structured",)


def test_ppl(mpt_row, mpt_check):
    mpt_check(mpt_row)
