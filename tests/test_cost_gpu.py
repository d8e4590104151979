"""GPU numbers in the cost table (issue #22): once a GPU run's records are measured into the
table's ``gpu`` section (``scripts/cost_table.py --gpu``), the plan prices the study tier at
the rates that run timed and the rest at the CPU rate over the measured speed-up, instead
of the assumed CPU_TO_H100_SPEEDUP."""

from __future__ import annotations

import json

import pytest
from scripts_loader import load_script

from conftest import table2_row
from mpt_core.harness import costs, plan
from mpt_core.records import Record, append
from mpt_core.spec import Spec

COMMITTED = costs.table()
CPU_PPL = COMMITTED["ppl_seconds_per_bparam_per_token"]
CPU_WANDA = COMMITTED["compress_seconds_per_bparam"]["wanda"]["point"]
CPU_ARC = COMMITTED["task_seconds_per_bparam_per_question"]["arc_easy"]


@pytest.fixture
def timed_on_gpu(monkeypatch):
    """The committed table with a GPU run that timed Wanda (2000x faster), perplexity and
    ARC-Easy (1000x faster)."""
    gpu = {
        "records": ["results-gpu.jsonl"],
        "recorded_on": ["cuda"],
        "compress_seconds_per_bparam": {"wanda": {"point": CPU_WANDA / 2000, "first": 0.0}},
        "ppl_seconds_per_bparam_per_token": CPU_PPL / 1000,
        "task_seconds_per_bparam_per_question": {"arc_easy": CPU_ARC / 1000},
    }
    monkeypatch.setattr(costs, "table", lambda: {**COMMITTED, "gpu": gpu})
    return gpu


def stage(spec: str):
    return Spec.parse(spec).stages[0]


def test_without_a_gpu_run_the_assumed_speedup_divides_every_cpu_rate():
    assert costs.gpu_speedup() == costs.CPU_TO_H100_SPEEDUP
    study = costs.stage_rate(stage("wanda:0.5"), "study")
    assert study.point == pytest.approx(CPU_WANDA / costs.CPU_TO_H100_SPEEDUP)
    assert not study.on_gpu
    assert "assumed from peak FLOP rates" in costs.estimate_note()


def test_the_speedup_is_the_median_ratio_over_the_rates_both_timed(timed_on_gpu):
    assert costs.gpu_speedup() == pytest.approx(1000)  # median of 2000, 1000, 1000
    assert "measured speed-up 1000 (median over 3 rates" in costs.estimate_note()


def test_what_the_gpu_run_timed_is_priced_at_its_own_rate_the_rest_scaled(timed_on_gpu):
    wanda = costs.stage_rate(stage("wanda:0.5"), "study")
    assert wanda.on_gpu and wanda.point == pytest.approx(CPU_WANDA / 2000)
    sparsegpt = costs.stage_rate(stage("sparsegpt:0.5"), "study")
    cpu_sparsegpt = COMMITTED["compress_seconds_per_bparam"]["sparsegpt"]["point"]
    assert not sparsegpt.on_gpu and sparsegpt.point == pytest.approx(cpu_sparsegpt / 1000)
    assert costs.stage_rate(stage("wanda:0.5")).point == CPU_WANDA  # the CPU tier unchanged


def test_evaluation_on_the_study_tier_takes_the_gpu_runs_rate(timed_on_gpu):
    tokens = COMMITTED["eval_tokens"]["wikitext2"]
    study = costs.evaluate_seconds(table2_row("dense"), 4096, None)
    assert study == pytest.approx(CPU_PPL / 1000 * 6.74 * (tokens // 4096) * 4096)
    cpu = costs.evaluate_seconds(table2_row("dense", tier="cpu"), 4096, None)
    assert cpu == pytest.approx(CPU_PPL * 6.74 * (tokens // 4096) * 4096)


def test_the_plan_changes_with_the_gpu_run_and_says_so(timed_on_gpu, monkeypatch):
    rows = [table2_row("wanda:0.5"), table2_row("sparsegpt:0.5")]
    measured = plan.as_json(plan.build(rows))
    monkeypatch.setattr(costs, "table", lambda: COMMITTED)
    assumed = plan.as_json(plan.build(rows))
    assert measured["cpu_to_gpu_speedup"] == pytest.approx(1000)
    assert assumed["cpu_to_gpu_speedup"] == costs.CPU_TO_H100_SPEEDUP
    ratio = costs.CPU_TO_H100_SPEEDUP / 1000
    assert measured["hours"]["GPU"]["evaluate"] == pytest.approx(
        assumed["hours"]["GPU"]["evaluate"] * ratio
    )
    assert "study tier at the 3 rates a GPU run timed (cuda)" in measured["note"]


def gpu_record(spec: str, compress: float, device: str = "cuda") -> Record:
    footprint = {"fp16_bytes": 2e9}  # one billion parameters
    seconds = {"compress": compress, "evaluate": 4.0}
    return Record(
        "m",
        "h",
        spec,
        "wikitext2",
        2048,
        2,
        "ppl",
        5.0,
        0.1,
        footprint,
        seconds,
        device,
        "bfloat16",
        created="2026-12-06T00:00:00+00:00",
    )


def test_the_script_measures_a_gpu_run_into_the_gpu_section_and_keeps_the_rest(tmp_path):
    results, out = tmp_path / "results-gpu.jsonl", tmp_path / "cost_table.json"
    for record in [
        gpu_record("wanda:0.5", 3.0),
        gpu_record("wanda:0.7", 5.0),
        gpu_record("dense", 0.0),
        gpu_record("wanda:0.6", 90.0, "cpu"),
    ]:
        append(results, record)
    out.write_text(json.dumps({"params": {"m": 1}}), encoding="utf-8")
    assert load_script("cost_table").main(["--gpu", str(results), "--out", str(out)]) == 0
    written = json.loads(out.read_text())
    assert written["params"] == {"m": 1}
    gpu = written["gpu"]
    assert gpu["recorded_on"] == ["cuda"]
    assert gpu["compress_seconds_per_bparam"] == {"wanda": {"point": 4.0, "first": 0.0}}
    assert gpu["ppl_seconds_per_bparam_per_token"] == pytest.approx(4.0 / 4096)


def test_a_gpu_run_without_perplexity_times_its_tasks_only(tmp_path, monkeypatch):
    task = gpu_record("dense", 0.0)
    task.metric, task.dataset, task.windows = "acc", "arc_easy", 100
    results, out = tmp_path / "results-gpu.jsonl", tmp_path / "cost_table.json"
    append(results, task)
    assert load_script("cost_table").main(["--gpu", str(results), "--out", str(out)]) == 0
    gpu = json.loads(out.read_text())["gpu"]
    assert gpu["ppl_seconds_per_bparam_per_token"] is None
    assert gpu["task_seconds_per_bparam_per_question"] == {"arc_easy": pytest.approx(0.04)}
    monkeypatch.setattr(costs, "table", lambda: {**COMMITTED, "gpu": gpu})
    assert costs.gpu_speedup() == pytest.approx(CPU_ARC / 0.04)
    dense = costs.evaluate_seconds(table2_row("dense"), 4096, None)
    tokens = COMMITTED["eval_tokens"]["wikitext2"]
    assert dense == pytest.approx(CPU_PPL / costs.gpu_speedup() * 6.74 * (tokens // 4096) * 4096)


def test_the_script_refuses_records_no_gpu_timed(tmp_path, capsys):
    results = tmp_path / "results.jsonl"
    append(results, gpu_record("wanda:0.5", 3.0, "cpu"))
    out = tmp_path / "cost_table.json"
    assert load_script("cost_table").main(["--gpu", str(results), "--out", str(out)]) == 1
    assert "no record in these files was timed on a cuda device" in capsys.readouterr().err
    assert not out.exists()
