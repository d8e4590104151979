"""Downstream baseline files: the limits a grid states travel into the CSV and back to the
rows the plugin measures, and accuracy rows land in the downstream test module."""

from __future__ import annotations

from dataclasses import replace

import pytest

from mpt_core.baselines import load_file, task_limits
from mpt_core.commands.baselines import _record_tasks
from mpt_core.errors import BaselineError
from mpt_core.harness.baseline_record import GRIDS_DIR, grid_tasks, write_csv
from mpt_core.records import Record, append, setup_key


def accuracy_record(task: str, metric: str, spec: str, value: float, limit: int | None) -> Record:
    return Record(
        model="tiny-llama",
        weights_hash="0" * 64,
        spec=spec,
        dataset=task,
        seqlen=512,
        windows=limit or 1000,
        metric=metric,
        value=value,
        stderr=0.03,
        footprint={"relative_size": 1.0 if spec == "dense" else 0.28},
        seconds={"compress": 0.0, "evaluate": 1.0},
        device="cpu",
        dtype="float32",
        fingerprint={"limit": limit, "num_fewshot": 5 if task == "mmlu" else 0},
        versions={"lm-eval": "0.4.13"},
    )


def test_task_limits_parse_and_reject_what_is_not_a_positive_count() -> None:
    assert task_limits("arc_easy=200, mmlu=5,arc_challenge") == {
        "arc_easy": 200,
        "mmlu": 5,
        "arc_challenge": None,
    }
    with pytest.raises(BaselineError, match="'mmlu=0': the limit must be a positive integer"):
        task_limits("mmlu=0")
    with pytest.raises(BaselineError, match="positive integer"):
        task_limits("arc_easy=all")


def test_the_shipped_downstream_grid_states_its_limits() -> None:
    assert grid_tasks(GRIDS_DIR / "downstream.txt") == {
        "arc_easy": 200,
        "arc_challenge": 200,
        "mmlu": 2,
    }
    assert grid_tasks(GRIDS_DIR / "quant.txt") == {}


def test_limits_travel_from_records_through_the_csv_to_the_rows(tmp_path) -> None:
    records_path, csv_path = tmp_path / "r.jsonl", tmp_path / "downstream.csv"
    specs = ["dense", "rtn:2[group=64]"]
    for spec in specs:
        append(records_path, accuracy_record("arc_easy", "acc", spec, 0.5, 200))
        append(records_path, accuracy_record("arc_easy", "acc_norm", spec, 0.45, 200))
        append(records_path, accuracy_record("mmlu", "acc", spec, 0.25, 5))
    assert write_csv(records_path, csv_path, "downstream", "mpt baselines record", specs) == 6
    text = csv_path.read_text()
    assert "# limits: arc_easy=200,mmlu=5" in text and "# windows:" not in text
    rows = load_file(csv_path, "cpu")
    assert {(row.dataset, row.limit) for row in rows} == {("arc_easy", 200), ("mmlu", 5)}
    assert {row.family for row in rows} == {"downstream"}  # acc_norm too, not "quant"
    assert {row.metric for row in rows if row.dataset == "arc_easy"} == {"acc", "acc_norm"}


def test_a_bad_limits_line_names_the_file(tmp_path) -> None:
    path = tmp_path / "downstream.csv"
    path.write_text(
        "# limits: arc_easy=-1\n"
        "model,dataset,spec,metric,value,stderr,size,size_unit,seqlen,source\n"
        "m,arc_easy,dense,acc,0.5,,,,512,x\n"
    )
    with pytest.raises(BaselineError, match=r"downstream\.csv: # limits: 'arc_easy=-1'"):
        load_file(path, "cpu")


class TaskSession:
    """A session that records which (spec, task) it was asked to score and scores nothing."""

    setup = setup_key("tiny-llama", "0" * 64, 512, "float32", "cpu")

    def __init__(self) -> None:
        self.scored: list[tuple[str, str]] = []

    def measure_tasks(self, spec, limits: dict) -> list:
        self.scored += [(str(spec), task) for task in limits]
        return []


def test_task_resume_skips_only_points_of_the_same_setup(tmp_path) -> None:
    """``mpt baselines record`` resumes a downstream grid by the point's whole identity
    (#23): a score in bfloat16 is not the float32 point."""
    records_path = tmp_path / "r.jsonl"
    append(records_path, accuracy_record("arc_easy", "acc", "dense", 0.5, 200))
    bfloat16 = replace(
        accuracy_record("arc_easy", "acc", "rtn:2[group=64]", 0.3, 200), dtype="bfloat16"
    )
    append(records_path, bfloat16)
    session = TaskSession()
    specs = ["dense", "rtn:2[group=64]"]
    _record_tasks(
        session, specs, {"arc_easy": 200}, records_path, tmp_path / "d.csv", "downstream", "mpt"
    )
    assert session.scored == [("rtn:2[group=64]", "arc_easy")]
