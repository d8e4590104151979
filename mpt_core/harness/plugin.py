"""The pytest plugin: baseline rows become parametrized tests, verdicts become asserts.

A benchmark module names the families it holds (``MPT_FAMILIES = ("quant",)``)
and defines ``test_ppl(mpt_row, mpt_measure)``; this plugin parametrizes
``mpt_row`` with every baseline row of those families (study tier: marked
``gpu``; CPU tier: marked ``cpu``), one test per row, id
``<model>-<dataset>-<spec>``. ``mpt_measure(row)`` skips with one line when the
method, metric, device, model or data is missing, else measures the point on a
model loaded once per session and restored before each test, and returns the
Verdict. At session end the plugin writes the markdown report.

Accuracy rows (``acc``, ``acc_norm``: the downstream family) are measured through
lm-eval on the local task files, at the limit their baseline file states.
Throughput rows (``tokens_per_s``) skip: the study's come from llama.cpp on its own
hardware; speed is guarded by ``benchmarks/test_speed_throughput.py``.

Tests run grouped by model, then shared first stage, then point, after any shuffle
(``collection.order``). ``--mpt-plan`` prints the selection's points, models and estimated
hours and runs nothing (``mpt_core.harness.plan``).

Scale-out (``mpt_core.harness.scaleout``): ``--mpt-shard i/n`` keeps a deterministic
n-th of the tests, balanced by estimated cost, for one CI runner; under ``pytest -n N``
each xdist worker pins its own GPU and appends records to its own part file, and the
controller merges records, report, history and baseline updates at session end.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mpt_core.errors import MptError
from mpt_core.families import FAMILY_TEXT
from mpt_core.harness import collection, options, outputs, plan
from mpt_core.harness.fixtures import (  # noqa: F401 (fixtures registered with the plugin)
    mpt_check,
    mpt_measure,
    mpt_measure_curve,
)
from mpt_core.harness.scaleout import parse_shard, pin_worker_gpu
from mpt_core.harness.state import MptState, worker_id

MARKERS = {
    **FAMILY_TEXT,
    "gpu": "the study tier: the study's models on a CUDA GPU",
    "cpu": "the CPU tier: SmolLM2-135M, baselines produced by the harness",
    "slow": "takes more than a few seconds on the CPU",
    "curve": "a whole curve fitted: has the phase-transition point moved?",
}


def pytest_addoption(parser) -> None:
    options.add_options(parser)


def pytest_configure(config) -> None:
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    options.check(config)
    for option in ("--mpt-data-dir", "--mpt-baselines"):
        folder = config.getoption(option)
        if folder and not Path(folder).is_dir():
            raise pytest.UsageError(
                f"{option} {folder}: no such folder (a gate given nothing to test is not green)"
            )
    if config.getoption("--mpt-data-dir"):
        os.environ["MPT_DATA_DIR"] = str(Path(config.getoption("--mpt-data-dir")).resolve())
    if config.getoption("--mpt-shard"):
        try:
            parse_shard(config.getoption("--mpt-shard"))
        except MptError as error:
            raise pytest.UsageError(str(error)) from None
    if worker_id(config) and not config.getoption("--mpt-device-map"):
        pin_worker_gpu(worker_id(config))
    config.pluginmanager.register(MptState(config), "mpt-state")


def pytest_generate_tests(metafunc) -> None:
    collection.parametrize(metafunc)


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    """A baseline file that does not read, or rows no test would judge, stop the session
    (exit 4) with one line per error, not a traceback under every benchmark module that
    asked for its rows."""
    report = yield
    error = collection.read_error(collector.config)
    if error is not None:
        raise pytest.UsageError(*error.splitlines())
    return report


@pytest.hookimpl(trylast=True)  # after -k/-m deselection and pytest-randomly's shuffle
def pytest_collection_modifyitems(config, items) -> None:
    collection.select(config, items)
    collection.order(config, items)
    config.pluginmanager.get_plugin("mpt-state").expect(collection.selected_rows(items))


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session):
    """``--mpt-plan``: print what the selection will measure and cost; run nothing."""
    if session.config.getoption("--mpt-plan") or session.config.getoption("--mpt-plan-json"):
        plan.report(session.config, collection.selected_rows(session.items))
        return True
    return None


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    state = config.pluginmanager.get_plugin("mpt-state")
    if state is not None and (state.verdicts or state.collected_rows):
        outputs.terminal_summary(terminalreporter.write_line, state, config)
