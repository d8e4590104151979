"""The session's measuring service: models loaded once, each point measured once, outcomes.

``MptState`` is registered as a plugin object (``mpt-state``) by the plugin. It opens one
``measure.Session`` per (model, seqlen), measures each (spec, dataset) once, appends every
record to ``--mpt-results``, counts outcomes and skip reasons, and at session end hands what
it gathered to ``mpt_core.harness.outputs`` (or, in an xdist worker, to the controller).
"""

from __future__ import annotations

import gc
import json
from collections import Counter
from dataclasses import asdict
from functools import cached_property

import pytest

from mpt_core import progress
from mpt_core.baselines import BaselineRecords, BaselineRow, NoiseFloors
from mpt_core.harness import collection, outputs, policy, rehearsal
from mpt_core.harness.scaleout import part_path
from mpt_core.harness.terminal_progress import terminal_stream
from mpt_core.records import Record, append
from mpt_core.reporting.report import Cell
from mpt_core.verdict import Verdict


def worker_id(config) -> str | None:
    """This process's xdist worker id (``gw0``), None in a serial run or the controller."""
    return getattr(config, "workerinput", {}).get("workerid")


class MptState:
    """Per-session state: loaded models, measured records, outcomes for the report."""

    def __init__(self, config):
        self.config = config
        self.sessions: dict[tuple, object] = {}
        self.records: dict[tuple, Record] = {}
        self.cells: list[Cell] = []
        self.measured_rows: list[tuple[BaselineRow, Record]] = []
        self.verdicts: list[tuple[BaselineRow, object]] = []
        # a MeasuredPoint -> the datasets its rows ask for
        self.datasets: dict[tuple, set[str]] = {}
        self.outcomes: Counter = Counter()
        self.collected_rows = 0  # baseline rows the selected tests ask for
        self.skips: Counter = Counter()
        self.baseline_records = BaselineRecords()  # the CPU tier's footprints, read once
        self.noise_floors = NoiseFloors()  # the CPU tier's measured noise floors, read once

    @cached_property
    def dense_baselines(self) -> policy.DenseBaselines:
        """The dense baseline index of the session's rows, built once."""
        return policy.DenseBaselines(collection.rows(self.config))

    def session_for(self, model: str, seqlen: int, dtype=None):
        """The measuring session of (model, seqlen) with the model in ``dtype`` (None: the
        device's default). One model is resident per process: a session of another model
        (or dtype) frees the last one first (the study's models fill a GPU); sessions of one
        model at several seqlens share its weights and snapshot."""
        from mpt_core.measure import Session
        from mpt_core.models import load_model

        key = (model, seqlen, dtype)
        most = rehearsal.REHEARSAL_CALIBRATION if rehearsal.rehearsal_model(self.config) else None
        if key not in self.sessions:
            resident = next(iter(self.sessions.items()), None)
            if resident is not None and resident[0][::2] != (model, dtype):
                resident = None
                self._free_resident()
            if resident is None:
                device_map = self.config.getoption("--mpt-device-map")
                loaded = load_model(model, dtype=dtype, device_map=device_map)
                self.sessions[key] = Session(loaded, seqlen, calibration_most=most)
            else:
                loaded, snapshot = resident[1].loaded, resident[1].snapshot
                self.sessions[key] = Session(loaded, seqlen, snapshot, most)
        return self.sessions[key]

    def _free_resident(self) -> None:
        import torch

        self.sessions.clear()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def expect(self, rows: list[BaselineRow]) -> None:
        """The rows this session will measure: a point compresses once for all of its
        perplexity datasets."""
        self.collected_rows = len(rows)
        windows_option = self.config.getoption("--mpt-windows")
        rehearse = rehearsal.rehearsal_model(self.config)
        for row in rows:
            if row.metric == "ppl":
                stand_in = rehearse if row.tier == "study" else None
                overrides = policy.Overrides.from_options(self.config.getoption)
                point = policy.measured_point(row, windows_option, stand_in, overrides=overrides)
                self.datasets.setdefault(point, set()).add(row.dataset)

    def measure(self, point: policy.MeasuredPoint, dataset: str) -> Record:
        """The perplexity record of ``point`` on ``dataset``; the first request compresses
        the model once and evaluates every dataset the session's rows of the point ask for."""
        if (point, dataset) not in self.records:
            wanted = {dataset} | self.datasets.get(point, set())
            todo = sorted(d for d in wanted if (point, d) not in self.records)
            resolved = point.plan()
            resolved.check_model(point.model)  # before the model loads
            session = self.session_for(point.model, point.seqlen, point.dtype)
            measured = session.measure_datasets(resolved, todo, point.windows, point.evaluation)
            for record in measured:
                self._keep((point, record.dataset), record)
        return self.records[(point, dataset)]

    def measure_accuracy(
        self, point: policy.MeasuredPoint, task: str, limit: int | None, metric: str
    ) -> Record:
        """The ``metric`` record of ``task`` at ``point``; one lm-eval run gives all its
        metrics."""
        key = (point, task, limit)
        if (*key, metric) not in self.records:
            resolved = point.plan()
            resolved.check_model(point.model)  # before the model loads
            session = self.session_for(point.model, point.seqlen, point.dtype)
            for record in session.measure_tasks(resolved, {task: limit}):
                self._keep((*key, record.metric), record)
        return self.records[(*key, metric)]

    def keep_verdict(self, row: BaselineRow, record: Record, verdict) -> None:
        """A judged point, for the report, the terminal summary and baseline updates."""
        self.cells.append(
            Cell(
                row.model,
                row.dataset,
                row.spec,
                row.metric,
                record.value,
                row.value,
                verdict.passed,
                verdict.outcome,
            )
        )
        self.measured_rows.append((row, record))
        self.verdicts.append((row, verdict))

    def _keep(self, key: tuple, record: Record) -> None:
        results = self.config.getoption("--mpt-results")
        if results:
            worker = worker_id(self.config)
            append(part_path(results, worker) if worker else results, record)
        self.records[key] = record

    @pytest.hookimpl(wrapper=True)
    def pytest_runtestloop(self, session):
        """Measurements draw their progress bars on pytest's terminal (an xdist worker's
        output is not one): ``mpt_core.harness.terminal_progress``."""
        with progress.shown(None if worker_id(self.config) else terminal_stream(self.config)):
            return (yield)

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
            self.measured_rows.append((BaselineRow(**row), Record.from_dict(json.loads(record))))
        for row, verdict in payload.get("verdicts", []):
            self.verdicts.append((BaselineRow(**row), Verdict(**_tuples(verdict))))
        for text in payload.get("records", []):
            record = Record.from_dict(json.loads(text))
            self.records.setdefault(record.key, record)  # both workers measure dense

    @pytest.hookimpl
    def pytest_sessionfinish(self, session) -> None:
        if worker_id(self.config):
            self.config.workeroutput["mpt"] = self._payload()
            return  # the controller writes the report, history and baselines
        outputs.write_all(self.config, self)

    def _payload(self) -> str:
        return json.dumps(
            {
                "cells": [asdict(cell) for cell in self.cells],
                "measured": [[asdict(row), record.to_json()] for row, record in self.measured_rows],
                "records": [record.to_json() for record in self.records.values()],
                "verdicts": [[asdict(row), asdict(verdict)] for row, verdict in self.verdicts],
            }
        )


def _tuples(fields: dict) -> dict:
    """JSON turned the verdict's tuple of footprint differences into a list: turn it back."""
    return {**fields, "footprint": tuple(fields.get("footprint", ()))}
