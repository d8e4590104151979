"""What a finished pytest session writes: merged results, updated CPU-tier baselines,
a history run, the markdown report (also into the GitHub step summary), and the terminal
summary of what was judged and what moved."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from mpt_core.harness import collection
from mpt_core.harness.scaleout import merge_parts
from mpt_core.reporting.report import summary_line, tables
from mpt_core.verdict import RE_RECORD


def write_all(config, state) -> None:
    """Every output the options ask for, from the session's ``MptState``."""
    if config.getoption("--mpt-results"):
        merge_parts(config.getoption("--mpt-results"))
    if config.getoption("--mpt-update-baselines"):
        update_cpu_baselines(state.measured_rows)
    if config.getoption("--mpt-history") and state.records:
        from mpt_core.reporting.history import write_run

        write_run(config.getoption("--mpt-history"), list(state.records.values()))
    path = config.getoption("--mpt-report")
    if path and (state.cells or state.skips):
        write_report(Path(path), state)


def update_cpu_baselines(measured: list) -> None:
    """Rewrite the CPU-tier CSV values from this run's records (never the study's)."""
    from mpt_core.harness.baseline_record import rewrite_values

    rows = [(row, record) for row, record in measured if row.tier == "cpu"]
    if rows:
        rewrite_values(rows)


def write_report(path: Path, state) -> None:
    text = (
        "## mpt report\n\n"
        + tables(state.cells)
        + "\n"
        + summary_line(state.outcomes["passed"], state.outcomes["failed"], dict(state.skips))
        + "\n"
    )
    path.write_text(text, encoding="utf-8")
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a", encoding="utf-8") as handle:
            handle.write(text)


def terminal_summary(write_line, state, config) -> None:
    """The rows collected (and the study's empty cells left out), judged and skipped (by
    reason), the points judged by outcome, then
    each point that did not pass with its baseline, measured value, ratio, recovery and the
    verdict's reason: a run that tested less than asked says so."""
    skipped = ", ".join(f"{count} {reason}" for reason, count in state.skips.most_common())
    empty = collection.empty_cells(config)
    write_line(
        f"mpt: {state.collected_rows} baseline rows collected, {len(state.verdicts)} judged, "
        f"{sum(state.skips.values())} tests skipped"
        + (f" ({skipped})" if skipped else "")
        + (f"; {empty} empty cells of the study ('-') are no tests" if empty else "")
    )
    outcomes = Counter(verdict.outcome for _row, verdict in state.verdicts)
    counts = ", ".join(f"{count} {outcome}" for outcome, count in sorted(outcomes.items()))
    if counts:
        write_line(f"mpt: {len(state.verdicts)} points judged: {counts}")
    for row, verdict in state.verdicts:
        if not verdict.passed:
            recovery = verdict.recovery_ratio
            advice = f"{RE_RECORD}; " if verdict.improved else ""  # better, yet failing
            write_line(
                f"  {verdict.outcome.upper()} {row.test_id} ({row.table}): {advice}baseline "
                f"{verdict.baseline:.4g}, measured {verdict.measured:.4g}, ratio "
                f"{verdict.ratio:.4f}, recovery "
                + (f"{recovery:.4f}" if recovery is not None else "-")
                + f"; {verdict.rule}"
                + (
                    f"; footprint changed: {', '.join(verdict.footprint)}"
                    if verdict.footprint
                    else ""
                )
            )
    if config.getoption("--mpt-report"):
        write_line(f"mpt: report written to {config.getoption('--mpt-report')}")
