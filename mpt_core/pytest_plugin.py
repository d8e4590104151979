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

Scale-out (``mpt_core.scaleout``): ``--mpt-shard i/n`` keeps a deterministic
n-th of the tests for one CI runner; under ``pytest -n N`` each xdist worker
pins its own GPU and appends records to its own part file, and the controller
merges records, report, history and baseline updates at session end.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import pytest

from mpt_core import baselines, registry
from mpt_core.curve_check import CurveVerdict, check_curve
from mpt_core.curve_rows import BaselineCurve, baseline_curves
from mpt_core.errors import DataError, ModelError, MptError
from mpt_core.report import Cell, summary_line, tables
from mpt_core.results import Record, append
from mpt_core.scaleout import in_shard, merge_parts, parse_shard, part_path, pin_worker_gpu
from mpt_core.spec import Spec

MARKERS = {
    "quant": "quantization points (Tables 4-6)",
    "unstructured": "unstructured pruning points (Tables 2-3)",
    "semi": "N:M semi-structured pruning points (Tables 2-3)",
    "structured": "structured pruning points (Table 1)",
    "lowrank": "low-rank decomposition points (Table 7)",
    "combined": "pipelines of two methods (Tables 8-10)",
    "downstream": "zero-shot / few-shot accuracy points (Table 5)",
    "speed": "throughput measurements",
    "gpu": "the study tier: the study's models on a CUDA GPU",
    "cpu": "the CPU tier: SmolLM2-135M, baselines produced by the harness",
    "slow": "takes more than a few seconds on the CPU",
    "curve": "a whole curve fitted: has the phase-transition point moved?",
}
# The hub checkpoints of the study's models, for the GPU tier.
STUDY_MODELS = {
    "llama2-7b": "meta-llama/Llama-2-7b-hf",
    "llama2-13b": "meta-llama/Llama-2-13b-hf",
    "llama2-70b": "meta-llama/Llama-2-70b-hf",
    # Tables 5-6 (GGUF study): the checkpoints their names print
    **{
        f"qwen2.5-{size}": f"Qwen/Qwen2.5-{size.upper()}"
        for size in ("0.5b", "1.5b", "3b", "7b", "14b", "32b", "72b")
    },
    "llama3.1-8b": "meta-llama/Llama-3.1-8B",
    **{f"gemma3-{size}-it": f"google/gemma-3-{size}-it" for size in ("1b", "4b", "12b", "27b")},
    "deepseek-r1-distill-llama-8b": "deepseek-ai/DeepSeek-R1-Distill-Llama-8B",
    "deepseek-r1-distill-qwen-14b": "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B",
}
STUDY_SEQLEN = {"llama2-7b": 4096}  # PROTOCOLS.md: Table 2's dense 5.12 is seqlen 4096
DEFAULT_STUDY_SEQLEN = 2048
DEFAULT_CPU_WINDOWS = 8
# What --mpt-smoke keeps of the CPU tier: a few points per implemented family, on WikiText-2
# (GGUF through llama.cpp, which CI installs with scripts/setup_gguf.sh, and one pipeline).
SMOKE_SPECS = {
    "dense",
    "rtn:4[group=64]",
    "rtn:2[group=64]",
    "magnitude:0.5",
    "magnitude:2:4",
    "shortgpt:0.2",
    "gguf:Q4_K_M",
    "wanda:0.5+gguf:Q4_K_M",
}
SMOKE_DATASET = "wikitext2"
DEFAULT_PTP_TOL = 0.05


def pytest_addoption(parser) -> None:
    group = parser.getgroup("mpt", "mpt regression harness")
    group.addoption(
        "--mpt-tier",
        choices=("cpu", "gpu", "all"),
        default="all",
        help="which baseline tier to collect (default: all)",
    )
    group.addoption("--mpt-model", default="smollm2-135m", help="the CPU-tier model")
    group.addoption("--mpt-data-dir", default=None, help="offline data (sets MPT_DATA_DIR)")
    group.addoption(
        "--mpt-windows",
        type=int,
        default=None,
        help="evaluation windows (default: the baseline file's)",
    )
    group.addoption(
        "--mpt-rtol",
        type=float,
        default=None,
        help=f"relative tolerance before the collapse (default {baselines.DEFAULT_RTOL})",
    )
    group.addoption("--mpt-baselines", default=None, help="baselines folder (default: ./baselines)")
    group.addoption("--mpt-results", default=None, help="append every record to this JSONL")
    group.addoption("--mpt-report", default=None, help="write the markdown report here")
    group.addoption(
        "--mpt-ptp-tol",
        type=float,
        default=DEFAULT_PTP_TOL,
        help=f"largest PTP shift a curve test accepts (default {DEFAULT_PTP_TOL})",
    )
    group.addoption("--mpt-history", default=None, help="write this run's records into DIR")
    group.addoption(
        "--mpt-smoke",
        action="store_true",
        help="keep only a few CPU-tier points per family (what CI runs)",
    )
    group.addoption(
        "--mpt-shard",
        default=None,
        metavar="I/N",
        help="keep shard I of N (1-based) of the collected tests: a CI matrix's share",
    )
    group.addoption(
        "--mpt-device-map",
        default=None,
        choices=("auto",),
        help="spread each model over every visible GPU (accelerate): models past one GPU",
    )
    group.addoption(
        "--mpt-update-baselines",
        action="store_true",
        help="rewrite the CPU-tier CSVs from this run (never the study's)",
    )


def pytest_configure(config) -> None:
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
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


def worker_id(config) -> str | None:
    """This process's xdist worker id (``gw0``), None in a serial run or the controller."""
    return getattr(config, "workerinput", {}).get("workerid")


def baselines_dir(config) -> Path:
    option = config.getoption("--mpt-baselines")
    return Path(option) if option else Path(config.rootpath) / "baselines"


def collect_rows(config) -> list[baselines.BaselineRow]:
    root, tier = baselines_dir(config), config.getoption("--mpt-tier")
    rows = []
    if tier in ("gpu", "all") and (root / "study").is_dir():
        rows += baselines.load_dir(root / "study", "study")
    cpu_dir = root / "cpu" / config.getoption("--mpt-model")
    if tier in ("cpu", "all") and cpu_dir.is_dir():
        rows += baselines.load_dir(cpu_dir, "cpu")
    return [row for row in rows if row.is_numeric]


def pytest_generate_tests(metafunc) -> None:
    if "mpt_row" in metafunc.fixturenames:
        families = getattr(metafunc.module, "MPT_FAMILIES", ())
        rows = [row for row in collect_rows(metafunc.config) if row.family in families]
        metafunc.parametrize("mpt_row", [_param(row) for row in rows], ids=_unique_ids(rows))
    if "mpt_curve" in metafunc.fixturenames:
        found = baseline_curves(collect_rows(metafunc.config))
        params = [pytest.param(curve, marks=_curve_marks(curve)) for curve in found]
        metafunc.parametrize("mpt_curve", params, ids=_unique_curve_ids(found))


def _curve_marks(curve: BaselineCurve) -> list:
    tier = pytest.mark.gpu if curve.rows[0].tier == "study" else pytest.mark.cpu
    return [pytest.mark.curve, tier, getattr(pytest.mark, curve.rows[-1].family)]


def _unique_curve_ids(found: list[BaselineCurve]) -> list[str]:
    counts = Counter(curve.test_id for curve in found)
    return [
        c.test_id if counts[c.test_id] == 1 else f"{c.test_id}-{c.rows[0].table}" for c in found
    ]


def pytest_collection_modifyitems(config, items) -> None:
    if config.getoption("--mpt-smoke"):
        _deselect(config, items, _in_smoke)
    if config.getoption("--mpt-shard"):
        index, count = parse_shard(config.getoption("--mpt-shard"))
        _deselect(config, items, lambda item: in_shard(item.nodeid, index, count))


def _deselect(config, items, keep_if) -> None:
    keep, drop = [], []
    for item in items:
        (keep if keep_if(item) else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def _in_smoke(item) -> bool:
    """Everything but the CPU tier's curves and its points outside SMOKE_SPECS."""
    params = item.callspec.params if hasattr(item, "callspec") else {}
    row, curve = params.get("mpt_row"), params.get("mpt_curve")
    if curve is not None:
        return curve.rows[0].tier != "cpu"
    return (
        row is None
        or row.tier != "cpu"
        or (row.spec in SMOKE_SPECS and row.dataset == SMOKE_DATASET)
    )


def _param(row: baselines.BaselineRow):
    marks = [getattr(pytest.mark, "gpu" if row.tier == "study" else "cpu")]
    family = row.family
    marks.append(getattr(pytest.mark, family))
    if family == "semi":
        marks.append(pytest.mark.unstructured)
    return pytest.param(row, marks=marks)


def _unique_ids(rows: list[baselines.BaselineRow]) -> list[str]:
    counts = Counter(row.test_id for row in rows)
    return [
        row.test_id if counts[row.test_id] == 1 else f"{row.test_id}-{row.table}" for row in rows
    ]


class MptState:
    """Per-session state: loaded models, measured records, outcomes for the report."""

    def __init__(self, config):
        self.config = config
        self.sessions: dict[tuple, object] = {}
        self.records: dict[tuple, Record] = {}
        self.cells: list[Cell] = []
        self.measured_rows: list[tuple[baselines.BaselineRow, Record]] = []
        self.outcomes: Counter = Counter()
        self.skips: Counter = Counter()

    def session_for(self, model: str, seqlen: int):
        from mpt_core.measure import Session

        key = (model, seqlen)
        if key not in self.sessions:
            device_map = self.config.getoption("--mpt-device-map")
            self.sessions[key] = Session.open(model, seqlen, device_map=device_map)
        return self.sessions[key]

    def measure(self, model: str, seqlen: int, spec: str, dataset: str, windows: int | None):
        key = (model, seqlen, spec, dataset, windows)
        if key not in self.records:
            record = self.session_for(model, seqlen).measure(Spec.parse(spec), dataset, windows)
            self._keep(key, record)
        return self.records[key]

    def measure_accuracy(
        self, model: str, seqlen: int, spec: str, task: str, limit: int | None, metric: str
    ) -> Record:
        """The ``metric`` record of ``task``; one lm-eval run gives all its metrics."""
        key = (model, seqlen, spec, task, limit)
        if (*key, metric) not in self.records:
            session = self.session_for(model, seqlen)
            for record in session.measure_tasks(Spec.parse(spec), {task: limit}):
                self._keep((*key, record.metric), record)
        return self.records[(*key, metric)]

    def _keep(self, key: tuple, record: Record) -> None:
        results = self.config.getoption("--mpt-results")
        if results:
            worker = worker_id(self.config)
            append(part_path(results, worker) if worker else results, record)
        self.records[key] = record

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report) -> None:
        if report.when == "call" or (report.when == "setup" and report.skipped):
            if report.skipped:
                reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else "skipped"
                self.skips[reason.removeprefix("Skipped: ").split(":")[0]] += 1
            else:
                self.outcomes[report.outcome] += 1

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node, error) -> None:
        """xdist controller: take over what a finished worker measured."""
        payload = json.loads(getattr(node, "workeroutput", {}).get("mpt", "{}"))
        self.cells += [Cell(**cell) for cell in payload.get("cells", [])]
        for row, record in payload.get("measured", []):
            self.measured_rows.append(
                (baselines.BaselineRow(**row), Record.from_dict(json.loads(record)))
            )
        for text in payload.get("records", []):
            record = Record.from_dict(json.loads(text))
            self.records.setdefault(record.key, record)  # both workers measure dense

    @pytest.hookimpl
    def pytest_sessionfinish(self, session) -> None:
        if worker_id(self.config):
            self.config.workeroutput["mpt"] = self._payload()
            return  # the controller writes the report, history and baselines
        if self.config.getoption("--mpt-results"):
            merge_parts(self.config.getoption("--mpt-results"))
        if self.config.getoption("--mpt-update-baselines"):
            _update_cpu_baselines(self.measured_rows)
        if self.config.getoption("--mpt-history") and self.records:
            from mpt_core.history import write_run

            write_run(self.config.getoption("--mpt-history"), list(self.records.values()))
        path = self.config.getoption("--mpt-report")
        if path and (self.cells or self.skips):
            self._write_report(Path(path))

    def _payload(self) -> str:
        return json.dumps(
            {
                "cells": [asdict(cell) for cell in self.cells],
                "measured": [[asdict(row), record.to_json()] for row, record in self.measured_rows],
                "records": [record.to_json() for record in self.records.values()],
            }
        )

    def _write_report(self, path: Path) -> None:
        text = (
            "## mpt report\n\n"
            + tables(self.cells)
            + "\n"
            + summary_line(self.outcomes["passed"], self.outcomes["failed"], dict(self.skips))
            + "\n"
        )
        path.write_text(text, encoding="utf-8")
        summary = os.environ.get("GITHUB_STEP_SUMMARY")
        if summary:
            with open(summary, "a", encoding="utf-8") as handle:
                handle.write(text)


def _skip_reason(row: baselines.BaselineRow) -> str | None:
    """Why this row cannot be measured here, or None."""
    import torch

    for method in Spec.parse(row.spec).methods:
        if method not in registry.names():
            return f"method {method} not implemented"
        if hint := registry.get(method).unavailable():
            return hint
    if row.metric == "tokens_per_s":
        return (
            "tokens/s rows not comparable: the study measured llama.cpp on its own hardware; "
            "speed is guarded by benchmarks/test_speed_throughput.py (--benchmark-compare-fail)"
        )
    if row.metric in baselines.DOWNSTREAM_METRICS:
        from mpt_core.evaluate.zeroshot import INSTALL_HINT, lm_eval_available

        if not lm_eval_available():
            return INSTALL_HINT
    elif row.metric != "ppl":
        return f"metric {row.metric} not implemented"
    if row.tier == "study":
        hub = STUDY_MODELS.get(row.model, row.model)
        if not torch.cuda.is_available():
            return (
                f"GPU tier: needs a CUDA device and the model {hub}; "
                "run `pytest benchmarks -m gpu` on a GPU runner"
            )
    return None


def _row_protocol(row: baselines.BaselineRow, config) -> tuple[str, int, int | None]:
    if row.tier == "study":
        seqlen = row.seqlen or STUDY_SEQLEN.get(row.model, DEFAULT_STUDY_SEQLEN)
        return STUDY_MODELS.get(row.model, row.model), seqlen, config.getoption("--mpt-windows")
    windows = config.getoption("--mpt-windows") or row.windows or DEFAULT_CPU_WINDOWS
    return row.model, row.seqlen or 512, windows


def _dense_baseline(row: baselines.BaselineRow, config) -> float | None:
    for other in collect_rows(config):
        if (other.tier, other.table, other.model, other.dataset, other.metric, other.spec) == (
            row.tier,
            row.table,
            row.model,
            row.dataset,
            row.metric,
            "dense",
        ):
            return other.value
    return None


def _measure_row(state: MptState, config, row: baselines.BaselineRow, spec: str | None = None):
    """The record of ``row`` (or of ``spec`` under row's protocol); skips with one line
    when the method, metric, device, model or data is missing."""
    reason = _skip_reason(row)
    if reason:
        pytest.skip(reason)
    model, seqlen, windows = _row_protocol(row, config)
    spec = spec or row.spec
    try:
        if row.metric in baselines.DOWNSTREAM_METRICS:
            return state.measure_accuracy(model, seqlen, spec, row.dataset, row.limit, row.metric)
        return state.measure(model, seqlen, spec, row.dataset, windows)
    except (DataError, ModelError) as error:
        pytest.skip(f"missing input: {error}")


@pytest.fixture
def mpt_measure(request):
    """Measure a baseline row (restored model, same protocol) and return its Verdict."""
    state: MptState = request.config.pluginmanager.get_plugin("mpt-state")
    config = request.config

    def measure(row: baselines.BaselineRow) -> baselines.Verdict:
        record = _measure_row(state, config, row)
        dense = _measure_row(state, config, row, "dense")
        verdict = baselines.check(
            record.value,
            row.value,
            rtol=_tolerance(row, config),
            dense_measured=dense.value,
            dense_baseline=_dense_baseline(row, config),
        )
        state.cells.append(
            Cell(
                row.model,
                row.dataset,
                row.spec,
                row.metric,
                record.value,
                row.value,
                verdict.passed,
            )
        )
        state.measured_rows.append((row, record))
        return verdict

    return measure


def _tolerance(row: baselines.BaselineRow, config) -> float:
    """--mpt-rtol (default 2%); an accuracy on a few hundred questions moves in steps of
    one question, so there it is at least one standard error of the baseline."""
    rtol = config.getoption("--mpt-rtol") or baselines.DEFAULT_RTOL
    stderr = row.stderr if row.stderr is not None and math.isfinite(row.stderr) else 0.0
    if row.metric in baselines.DOWNSTREAM_METRICS and row.value:
        return max(rtol, stderr / row.value)
    return rtol


def _update_cpu_baselines(measured: list) -> None:
    from mpt_core.baseline_record import rewrite_values

    rows = [(row, record) for row, record in measured if row.tier == "cpu"]
    if rows:
        rewrite_values(rows)


@pytest.fixture
def mpt_measure_curve(request):
    """Measure every point of a baseline curve and return the CurveVerdict of its PTP."""
    state: MptState = request.config.pluginmanager.get_plugin("mpt-state")
    config = request.config

    def measure(curve: BaselineCurve) -> CurveVerdict:
        measured = [_measure_row(state, config, row).value for row in curve.rows]
        return check_curve(
            curve.label,
            (curve.x, [row.value for row in curve.rows]),
            (curve.x, measured),
            ptp_tol=config.getoption("--mpt-ptp-tol"),
        )

    return measure
