"""Regression points of the unstructured family, one test per baseline row (mpt_core.harness)."""

MPT_FAMILIES = (
    "unstructured",
    "semi",
)


def test_ppl(mpt_row, mpt_measure):
    verdict = mpt_measure(mpt_row)
    assert verdict.passed, verdict.message
