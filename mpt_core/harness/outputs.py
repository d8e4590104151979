"""What a finished pytest session writes: merged results, updated CPU-tier baselines,
a history run, and the markdown report (also into the GitHub step summary)."""

from __future__ import annotations

import os
from pathlib import Path

from mpt_core.harness.scaleout import merge_parts
from mpt_core.reporting.report import summary_line, tables


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
