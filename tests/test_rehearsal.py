"""The rehearsal of the study tier (``--mpt-rehearse MODEL``): every study row's code path on a
small model, no GPU. The sample CI runs covers every table, method, metric and test; the run
ends each row rehearsed or skipped with one line, and errors nowhere."""

from __future__ import annotations

import re
import subprocess
import sys
from types import SimpleNamespace

from conftest import REPO, cli_env, needs_data
from mpt_core import baselines
from mpt_core.harness import collection, policy, rehearsal
from mpt_core.spec import Spec

STUDY = baselines.load_dir(REPO / "baselines" / "study", "study")
MEASURED = [row for row in STUDY if row.has_value]
REHEARSABLE = [row for row in MEASURED if policy.skip_reason(row, rehearsing=True) is None]


def _item(row, index: int):
    test = "test_metric" if row.metric != "ppl" else "test_ppl"
    return SimpleNamespace(
        nodeid=f"benchmarks/x.py::{test}[{index}]",
        originalname=test,
        callspec=SimpleNamespace(params={"mpt_row": row}),
    )


def _aspects(rows) -> set:
    return (
        {("table", r.table) for r in rows}
        | {("metric", r.metric) for r in rows}
        | {("method", m) for r in rows for m in Spec.parse(r.spec).methods}
    )


def test_the_sample_covers_every_table_method_and_metric_of_the_study():
    items = [_item(row, i) for i, row in enumerate(MEASURED)]
    kept = rehearsal.sample(items, collection.item_rows, lambda row: row in REHEARSABLE)
    chosen = [item.callspec.params["mpt_row"] for item in items if item.nodeid in kept]
    assert _aspects(chosen) == _aspects(REHEARSABLE)
    assert len(chosen) < len(MEASURED) / 10
    again = rehearsal.sample(
        list(reversed(items)), collection.item_rows, lambda row: row in REHEARSABLE
    )
    assert again == kept  # deterministic


def test_a_rehearsed_row_loads_the_stand_in_at_its_protocols_seqlen():
    row = next(r for r in MEASURED if r.table == "table2" and r.spec.startswith("wanda"))
    model, seqlen, windows = policy.row_protocol(row, None, "tiny-llama")
    assert (model, windows) == ("tiny-llama", rehearsal.REHEARSAL_WINDOWS)
    assert seqlen == policy.row_protocol(row, None)[1]
    assert policy.skip_reason(row, rehearsing=True) is None


def test_a_spec_the_implementation_refuses_is_a_one_line_skip_not_an_error():
    row = next(r for r in MEASURED if r.spec.startswith("owl:2:4"))
    assert policy.skip_reason(row, rehearsing=True).startswith("spec cannot run: owl")


@needs_data
def test_the_ci_sample_rehearses_every_table_with_zero_errors():
    command = [
        sys.executable, "-m", "pytest", "benchmarks", "-m", "gpu", "--mpt-rehearse",
        "tiny-llama", "--mpt-smoke", "-p", "no:randomly", "-p", "no:cacheprovider", "-q",
        "--benchmark-disable", "-rs",
    ]  # fmt: skip
    env = cli_env(CUDA_VISIBLE_DEVICES="")
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:]
    summary = done.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"\d+ skipped, \d+ deselected in .*", summary), summary
    reasons = [line.split(": ", 1)[1] for line in done.stdout.splitlines() if "SKIPPED" in line]
    rehearsed = [reason for reason in reasons if reason.startswith("rehearsed: ")]
    tables = {reason.split()[1] for reason in rehearsed}
    assert tables == {row.table for row in REHEARSABLE}
    assert all("\n" not in reason for reason in reasons)
