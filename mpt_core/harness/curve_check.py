"""Regressions on the curve: has a method's phase-transition point moved?

Point tolerances miss a knee that moves while every point stays inside its
tolerance, and must treat points past the knee as chaos. Here the baseline
curve and the measured curve are both fitted (``mpt_core.analysis.fit``) and their s0
compared: the verdict fails when the two 95% intervals stop overlapping, or when
the shift exceeds ``ptp_tol`` if one is set, or when one curve has a transition
by the fitter's evidence and the other clearly has none.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mpt_core.analysis.fit import EVIDENCE, PhaseFit, fit_phase_transition


@dataclass(frozen=True)
class CurveVerdict:
    label: str
    baseline: PhaseFit
    measured: PhaseFit
    ptp_tol: float | None = None

    @property
    def shift(self) -> float:
        return self.measured.s0 - self.baseline.s0

    @property
    def overlap(self) -> bool:
        b, m = self.baseline, self.measured
        return m.s0_low <= b.s0_high and b.s0_low <= m.s0_high

    @property
    def same_shape(self) -> bool:
        """False only when one curve has a knee by the fitter's evidence and the other
        clearly has none (ΔBIC < 0); in between, the s0 intervals decide."""
        b, m = self.baseline.evidence, self.measured.evidence
        return not ((b >= EVIDENCE and m < 0) or (m >= EVIDENCE and b < 0))

    @property
    def passed(self) -> bool:
        if not self.same_shape:
            return False
        if not (self.baseline.has_transition or self.measured.has_transition):
            return True
        within = self.ptp_tol is None or abs(self.shift) <= self.ptp_tol
        return self.overlap and within

    @property
    def message(self) -> str:
        verdict = "ok" if self.passed else "PTP MOVED"
        rule = "intervals must overlap" + (
            f" and |shift| <= {self.ptp_tol:g}" if self.ptp_tol is not None else ""
        )
        shape = (
            ""
            if self.same_shape
            else (f"; transition {'appeared' if self.measured.has_transition else 'disappeared'}")
        )
        return (
            f"{verdict} {self.label}: measured s0 {_interval(self.measured)} vs baseline s0 "
            f"{_interval(self.baseline)}, shift {self.shift:+.3f}, "
            f"overlap {'yes' if self.overlap else 'no'} ({rule}){shape}"
        )


def _interval(fit: PhaseFit) -> str:
    return f"{fit.s0:.3f} [{fit.s0_low:.3f}, {fit.s0_high:.3f}]"


def check_curve(
    label: str,
    baseline: tuple[np.ndarray, np.ndarray],
    measured: tuple[np.ndarray, np.ndarray],
    *,
    x_kind: str = "ratio",
    ptp_tol: float | None = None,
) -> CurveVerdict:
    """Fit both (x, y) curves and compare their phase-transition points."""
    return CurveVerdict(
        label,
        fit_phase_transition(*baseline, x_kind=x_kind),
        fit_phase_transition(*measured, x_kind=x_kind),
        ptp_tol,
    )
