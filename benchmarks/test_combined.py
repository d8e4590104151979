"""Regression points of the combined family, one test per baseline row (mpt_core.harness)."""

MPT_FAMILIES = ("combined",)


def test_ppl(mpt_row, mpt_check):
    mpt_check(mpt_row)
