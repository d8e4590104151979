"""The verdict a measured point gets against its baseline row.

Before the collapse a measurement must be within a relative tolerance of the baseline; in
the collapsed regime (the baseline many times the dense value) the numbers are chaotic
and the assertion is only "still collapsed". Beside it, a recovery check compares
measured/dense-measured with baseline/dense-baseline, so a library update that moves
dense and compressed alike is told apart from one that breaks compression.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DEFAULT_RTOL = 0.02
COLLAPSE_FACTOR = 10.0  # a PPL this many times the dense one is the collapsed regime


@dataclass(frozen=True)
class Verdict:
    measured: float
    baseline: float
    rtol: float
    regime: str  # "stable" or "collapsed"
    passed: bool
    dense_measured: float | None = None
    dense_baseline: float | None = None

    @property
    def ratio(self) -> float:
        return self.measured / self.baseline if self.baseline else math.inf

    @property
    def recovery_ratio(self) -> float | None:
        """(measured / dense measured) / (baseline / dense baseline)."""
        if not (self.dense_measured and self.dense_baseline and self.baseline):
            return None
        return (self.measured / self.dense_measured) / (self.baseline / self.dense_baseline)

    @property
    def message(self) -> str:
        verdict = "ok" if self.passed else "REGRESSION"
        if self.regime == "collapsed":
            rule = f"collapsed regime: must stay > {COLLAPSE_FACTOR:g}x dense"
        else:
            rule = f"|ratio-1| <= {self.rtol:g}"
        text = (
            f"{verdict}: measured {self.measured:.4f} vs baseline {self.baseline:.4f}, "
            f"ratio {self.ratio:.4f}, tolerance {rule}"
        )
        recovery = self.recovery_ratio
        if recovery is not None:
            moved = "dense moved alike" if abs(recovery - 1) <= self.rtol else "compression moved"
            text += (
                f"; recovery vs dense {recovery:.4f} (dense measured "
                f"{self.dense_measured:.4f}, baseline {self.dense_baseline:.4f}: {moved})"
            )
        return text


def check(
    measured: float,
    baseline: float,
    *,
    rtol: float = DEFAULT_RTOL,
    dense_measured: float | None = None,
    dense_baseline: float | None = None,
) -> Verdict:
    """The verdict of a measured PPL against its baseline (see the module docstring)."""
    reference = dense_baseline or dense_measured
    collapsed = not math.isfinite(baseline) or (
        reference is not None and baseline > COLLAPSE_FACTOR * reference
    )
    if collapsed:
        floor = COLLAPSE_FACTOR * (dense_measured or reference or 0.0)
        passed = not math.isfinite(measured) or measured > floor
        regime = "collapsed"
    else:
        # an accuracy can be 0: there only the same 0 is within a relative tolerance
        passed = math.isfinite(measured) and (
            measured == baseline or (baseline != 0 and abs(measured / baseline - 1) <= rtol)
        )
        regime = "stable"
    return Verdict(measured, baseline, rtol, regime, passed, dense_measured, dense_baseline)
