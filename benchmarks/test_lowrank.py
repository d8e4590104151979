"""Regression points of the lowrank family, one test per baseline row (mpt_core.harness)."""

MPT_FAMILIES = ("lowrank",)


def test_ppl(mpt_row, mpt_check):
    mpt_check(mpt_row)
