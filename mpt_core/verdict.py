"""The verdict a measured point gets against its baseline: the one place that decides.

The pytest plugin, ``mpt report --baselines``, ``mpt compare`` and ``mpt history`` all
judge through ``check`` (and ``footprint_changes`` where both sides carry a footprint),
so they cannot disagree.

- **Stable regime** (the baseline below ``COLLAPSE_FACTOR`` × dense): the measured value
  must be within ``rtol`` of the baseline (two-sided: a baseline that no longer describes
  the method is a change to look at, in either direction). Non-finite fails.
- **Collapsed regime** (baseline ≥ ``COLLAPSE_FACTOR`` × dense, or non-finite): the numbers
  are chaotic, so the value must stay within a factor ``COLLAPSE_BAND`` of the baseline
  ("still collapsed"); a point that drifts further, that turns NaN or infinite while its
  baseline was finite, or that left the collapse (an improvement) is a change and fails.
  A non-finite measurement passes only against a non-finite baseline.
- **Footprint**: bytes and bits per weight are arithmetic, so a measured point must equal
  its baseline's exactly; measured sparsity counts zeros, and rounding makes some, so float
  order moves it a little (wanda:0.5+gguf:Q4_K_M on SmolLM2: 9.6e-7 between 1 and 2 threads):
  it must agree to ``SPARSITY_ATOL``. Any difference fails with both numbers.
- **Recovery** (llm-compressor's idea): measured/dense-measured against baseline/dense-
  baseline tells a library shift that moves dense alike from broken compression; reported
  for every point, and a gate when ``min_recovery`` is given.

- **Paired windows**: where both sides carry each window's loss on the same windows, the
  change is judged on the paired differences: a stable point fails only when the 95%
  interval of its mean log-loss change lies wholly outside the tolerance (the tolerance is
  the floor; on a deterministic tier the interval is a point and this is the plain rule).
- **Protocol**: a value is compared only when it was measured the way its baseline was
  (seqlen, windows, dtype); otherwise the verdict is ``protocol differs`` and fails, naming
  the field: a changed protocol is never read as a regression or a library's effect.

Words: ``ok``, ``still collapsed``, ``regressed``, ``improved``, ``left collapse``,
``footprint changed``, ``recovery below gate``, ``protocol differs``. A value beyond its
tolerance is said to have *regressed* (worse) or *improved* (better; ``left collapse`` is
an improvement too), never just "failed": an improvement fails as well, since the baseline
no longer describes the method, and its message says to re-record the baseline. What moves
without a better or worse (a phase-transition point, ``harness.curve_check``) has *moved*.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass

from mpt_core.baselines import DOWNSTREAM_METRICS

DEFAULT_RTOL = 0.02
COLLAPSE_FACTOR = 10.0  # a PPL this many times the dense one is the collapsed regime
COLLAPSE_BAND = 3.0  # inside the collapse a point may move by this factor ("still collapsed")
FOOTPRINT_FIELDS = ("bytes", "bits_per_weight", "sparsity")
SPARSITY_ATOL = 1e-5  # ~1,300 of SmolLM2's 135M weights; pruning 10% less moves it by 0.01+
NOISE_MULTIPLE = 3.0  # a tolerance is never below this multiple of the point's noise floor
CHAOTIC = 0.05  # a noise floor above this: the point is chaotic (float order alone moves it)
HIGHER_IS_BETTER = DOWNSTREAM_METRICS  # accuracies; perplexity is better lower
IMPROVEMENTS = ("improved", "left collapse")  # better than the baseline, beyond tolerance
RE_RECORD = "re-record the baseline"
HEADLINES = {
    "regressed": "regressed beyond tolerance",
    "improved": f"improved beyond tolerance ({RE_RECORD})",
    "left collapse": f"left collapse, improved beyond tolerance ({RE_RECORD})",
}


@dataclass(frozen=True)
class Verdict:
    measured: float
    baseline: float
    rtol: float
    regime: str  # "stable" or "collapsed"
    outcome: str  # one of the words in the module docstring
    dense_measured: float | None = None
    dense_baseline: float | None = None
    footprint: tuple[str, ...] = ()  # the footprint fields that differ, with both numbers
    min_recovery: float | None = None
    higher_is_better: bool = False
    noise: float | None = None  # the point's measured noise floor, where known
    protocol: tuple[str, ...] = ()  # protocol fields that differ from the baseline's
    paired: tuple[float, float] | None = None  # (mean log-loss change, its 95% half-width)

    @property
    def chaotic(self) -> bool:
        """Float order alone moves this point by more than ``CHAOTIC``."""
        return self.noise is not None and self.noise > CHAOTIC

    @property
    def passed(self) -> bool:
        return self.outcome in ("ok", "still collapsed")

    @property
    def improved(self) -> bool:
        """Better than the baseline beyond tolerance: fails until the baseline is re-recorded."""
        return self.outcome in IMPROVEMENTS

    @property
    def headline(self) -> str:
        """The outcome in words that say which way: ``regressed beyond tolerance``,
        ``improved beyond tolerance (re-record the baseline)``."""
        return HEADLINES.get(self.outcome, self.outcome)

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
    def rule(self) -> str:
        if self.regime == "collapsed":
            return f"collapsed regime: within {COLLAPSE_BAND:g}x of the baseline"
        return f"|ratio-1| <= {self.rtol:g}"

    @property
    def message(self) -> str:
        if self.protocol:
            return f"protocol differs: {', '.join(self.protocol)} (measured vs baseline)"
        text = (
            f"{self.headline}: measured {self.measured:.4f} vs baseline {self.baseline:.4f}, "
            f"ratio {self.ratio:.4f}, tolerance {self.rule}"
        )
        recovery = self.recovery_ratio
        if recovery is not None:
            moved = "dense moved alike" if abs(recovery - 1) <= self.rtol else "compression moved"
            text += (
                f"; recovery vs dense {recovery:.4f} (dense measured "
                f"{self.dense_measured:.4f}, baseline {self.dense_baseline:.4f}: {moved})"
            )
        if self.footprint:
            text += "; footprint changed: " + ", ".join(self.footprint)
        if self.paired is not None:
            mean, half = self.paired
            text += f"; paired windows: log change {mean:+.5f} ± {half:.5f} (95%)"
        if self.chaotic:
            text += f"; chaotic point (noise floor {self.noise:.1%})"
        return text


def check(
    measured: float,
    baseline: float,
    *,
    rtol: float = DEFAULT_RTOL,
    dense_measured: float | None = None,
    dense_baseline: float | None = None,
    footprint: tuple[str, ...] = (),
    min_recovery: float | None = None,
    higher_is_better: bool = False,
    noise: float | None = None,
    protocol: tuple[str, ...] = (),
    paired: tuple[float, float] | None = None,
) -> Verdict:
    """The verdict of a measured value against its baseline (see the module docstring)."""
    reference = dense_baseline or dense_measured
    collapsed = not math.isfinite(baseline) or (
        not higher_is_better and reference is not None and baseline > COLLAPSE_FACTOR * reference
    )
    regime = "collapsed" if collapsed else "stable"
    verdict = Verdict(
        measured, baseline, rtol, regime, "ok", dense_measured, dense_baseline,
        footprint, min_recovery, higher_is_better, noise, protocol, paired,
    )  # fmt: skip
    if protocol:
        return dataclasses.replace(verdict, outcome="protocol differs")
    outcome = _value_outcome(verdict, dense_measured or reference)
    if outcome in ("ok", "still collapsed") and footprint:
        outcome = "footprint changed"
    if outcome == "ok" and _below_gate(verdict):
        outcome = "recovery below gate"
    return dataclasses.replace(verdict, outcome=outcome)


def _value_outcome(verdict: Verdict, dense: float | None) -> str:
    measured, baseline = verdict.measured, verdict.baseline
    if verdict.regime == "collapsed":
        return _collapsed_outcome(measured, baseline, dense)
    if not math.isfinite(measured):
        return "regressed"
    # an accuracy can be 0: there only the same 0 is within a relative tolerance
    if measured == baseline or (baseline != 0 and abs(measured / baseline - 1) <= verdict.rtol):
        return "ok"
    if verdict.paired is not None:
        mean, half = verdict.paired
        if abs(mean) - half <= math.log1p(verdict.rtol):
            return "ok"  # the paired interval still reaches inside the tolerance
    better = measured > baseline if verdict.higher_is_better else measured < baseline
    return "improved" if better else "regressed"


def _collapsed_outcome(measured: float, baseline: float, dense: float | None) -> str:
    if not math.isfinite(measured):
        return "regressed" if math.isfinite(baseline) else "still collapsed"
    if dense is not None and measured < COLLAPSE_FACTOR * dense:
        return "left collapse"
    # a finite value against a non-finite baseline, still past the collapse, has no band
    if not math.isfinite(baseline) or abs(math.log(measured / baseline)) <= math.log(COLLAPSE_BAND):
        return "still collapsed"
    return "improved" if measured < baseline else "regressed"


def _below_gate(verdict: Verdict) -> bool:
    """Recovery gating: compressed/dense must keep ``min_recovery`` of the baseline's."""
    recovery = verdict.recovery_ratio
    if verdict.min_recovery is None or recovery is None:
        return False
    kept = recovery if verdict.higher_is_better else 1 / recovery
    return kept < verdict.min_recovery


def footprint_changes(measured: dict | None, baseline: dict | None) -> tuple[str, ...]:
    """The footprint fields (bytes, bits per weight, sparsity) that differ, each with both
    numbers; nothing where either side has no footprint."""
    if not measured or not baseline:
        return ()
    return tuple(
        f"{field} {measured[field]!r} vs baseline {baseline[field]!r}"
        for field in FOOTPRINT_FIELDS
        if field in measured and field in baseline and _differs(field, measured, baseline)
    )


def _differs(field: str, measured: dict, baseline: dict) -> bool:
    if field == "sparsity":
        return abs(measured[field] - baseline[field]) > SPARSITY_ATOL
    return measured[field] != baseline[field]


def judge(
    record,
    baseline: float,
    *,
    rtol: float = DEFAULT_RTOL,
    dense_measured: float | None = None,
    dense_baseline: float | None = None,
    baseline_footprint: dict | None = None,
    min_recovery: float | None = None,
    noise: float | None = None,
    baseline_protocol: dict | None = None,
    baseline_losses: list | None = None,
) -> Verdict:
    """A measured record against a baseline value (and the baseline's footprint and
    protocol, where known): what every judge of mpt calls."""
    return check(
        record.value,
        baseline,
        rtol=rtol,
        dense_measured=dense_measured,
        dense_baseline=dense_baseline,
        footprint=footprint_changes(record.footprint, baseline_footprint),
        min_recovery=min_recovery,
        higher_is_better=record.metric in HIGHER_IS_BETTER,
        noise=noise,
        protocol=protocol_changes(protocol_of(record), baseline_protocol),
        paired=_consistent(paired_change(record.window_losses, baseline_losses), record, baseline),
    )


def _consistent(paired, record, baseline: float):
    """The paired change only where it is the change of the values themselves (a value
    edited or rounded apart from its windows is judged on the values)."""
    if paired is None or not (record.value > 0 and baseline > 0):
        return None
    # 1e-5: a CSV prints values to 6 significant digits
    return paired if abs(math.log(record.value / baseline) - paired[0]) < 1e-5 else None


def paired_change(measured: list, baseline: list | None) -> tuple[float, float] | None:
    """Mean per-window log-loss change and the half-width of its 95% t interval, where both
    sides scored the same number (two or more) of windows; else None."""
    if not measured or not baseline or len(measured) != len(baseline) or len(measured) < 2:
        return None
    differences = [a - b for a, b in zip(measured, baseline, strict=True)]
    if not all(math.isfinite(d) for d in differences):
        return None
    from scipy import stats

    n = len(differences)
    t_975 = stats.t.ppf(0.975, n - 1)
    return statistics.fmean(differences), t_975 * statistics.stdev(differences) / math.sqrt(n)


PROTOCOL_FIELDS = ("evaluation", "seqlen", "windows", "dtype")


def protocol_of(record) -> dict:
    """The protocol fields of a record (windows only for perplexity: an accuracy record's
    ``windows`` counts the questions)."""
    fields = {"evaluation": record.evaluation, "seqlen": record.seqlen, "dtype": record.dtype}
    if record.metric == "ppl":
        fields["windows"] = record.windows
    return fields


def protocol_changes(measured: dict, baseline: dict | None) -> tuple[str, ...]:
    """``windows 4 vs 8`` for each protocol field both sides know and disagree on."""
    if not baseline:
        return ()
    return tuple(
        f"{field} {measured[field]} vs {baseline[field]}"
        for field in PROTOCOL_FIELDS
        if baseline.get(field) is not None
        and measured.get(field) is not None
        and measured[field] != baseline[field]
    )
