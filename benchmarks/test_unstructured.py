"""Regression points of the unstructured family, one test per baseline row (mpt_core.harness)."""

MPT_FAMILIES = (
    "unstructured",
    "semi",
)


def test_ppl(mpt_row, mpt_check):
    mpt_check(mpt_row)
