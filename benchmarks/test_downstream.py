"""Regression points of the downstream family, one test per baseline row (mpt_core.harness).

Accuracy rows (ARC-E, ARC-C: acc, acc_norm; MMLU: acc) are measured through lm-eval on
the local task files, at the limit the baseline file states (``# limits:``; the study's
rows: every question). The study's tokens/s rows skip with the reason: llama.cpp on the
study's hardware is not reproducible here; ``test_speed_throughput.py`` guards speed.
"""

MPT_FAMILIES = ("downstream", "speed")


def test_metric(mpt_row, mpt_check):
    mpt_check(mpt_row)
