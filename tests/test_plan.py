"""``--mpt-plan`` (issue #22): the selection's distinct points, rows, models and estimated
hours, printed from collection alone; the cost table it reads is the one
scripts/cost_table.py measures from the committed CPU-tier records."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from scripts_loader import load_script

from conftest import HAS_PTB, HAS_WIKITEXT, cli_env, offline_file, table2_row
from mpt_core import baselines
from mpt_core.baselines import BaselineRow
from mpt_core.harness import costs, plan, policy
from mpt_core.models import STUDY_MODELS, STUDY_PARAMS, cache_dir
from mpt_core.spec import Spec

ROOT = Path(__file__).resolve().parent.parent
SUMMARY = re.compile(r"plan: (\d+) rows, (\d+) measured at (\d+) distinct points")
HOURS = re.compile(r"plan: ([\d.]+) GPU-hours")


def run_plan(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pytest", "benchmarks", "-m", "gpu", "--mpt-plan"]
    command += ["-p", "no:randomly", "-p", "no:cacheprovider", "-q", *args]
    return subprocess.run(command, cwd=ROOT, env=cli_env(), capture_output=True, text=True)


def study_points(keep=lambda row: True) -> set[tuple]:
    """The distinct points of the study's rows, counted here without the plan."""
    rows = [row for row in baselines.load_dir(ROOT / "baselines" / "study", "study")]
    return {
        (*policy.row_protocol(row, None)[:2], row.spec)
        for row in rows
        if row.has_value and row.metric != "tokens_per_s" and keep(row)
    }


def test_the_plan_of_the_study_tier_counts_its_distinct_points_and_runs_nothing(tmp_path):
    result = run_plan("--mpt-plan-json", str(tmp_path / "plan.json"))
    assert result.returncode == 0, result.stdout[-2000:]
    assert not re.search(r"\d+ (passed|failed|skipped)", result.stdout), result.stdout[-500:]
    rows, measured, points = map(int, SUMMARY.search(result.stdout).groups())
    assert points == len(study_points()) > 400
    assert measured == sum(1 for row in all_study_rows() if row.metric != "tokens_per_s")
    assert rows == len(all_study_rows())
    found = json.loads((tmp_path / "plan.json").read_text())
    assert len(found["points"]) == points
    assert sum(len(point["rows"]) for point in found["points"]) == measured
    hours = found["hours"]["GPU"]
    printed = float(HOURS.search(result.stdout).group(1))
    assert printed == pytest.approx(hours["compress"] + hours["evaluate"], abs=0.05)
    assert {model["checkpoint"] for model in found["models"]} == set(STUDY_MODELS.values())
    stated = f"{rows} rows, {measured} measured at {points} distinct points"
    assert stated in readme_text(), f"README.md: the plan of -m gpu is now {stated}"
    assert f"{printed} GPU-hours" in readme_text(), f"README.md: the plan is now {printed} h"
    assert_usage_shows(result.stdout)


def test_the_plan_follows_k():
    result = run_plan("-k", "quant")
    assert result.returncode == 0, result.stdout[-2000:]
    rows, _, points = map(int, SUMMARY.search(result.stdout).groups())
    assert points == len(study_points(lambda row: row.family == "quant"))
    stated = f"`-k quant`: {rows} rows at {points} points"
    assert stated in readme_text(), f"README.md: the plan of -m gpu -k quant is now {stated}"
    assert_usage_shows(result.stdout)


def assert_usage_shows(output: str) -> None:
    """docs/usage.md shows the plan's output as it is now, line for line."""
    usage = (ROOT / "docs" / "usage.md").read_text(encoding="utf-8").splitlines()
    for line in output.splitlines():
        if line.startswith("plan:"):
            assert line in usage, f"docs/usage.md: the plan now prints {line!r}"


def readme_text() -> str:
    """README.md with its lines joined: a stated count may wrap."""
    return " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())


def all_study_rows() -> list[BaselineRow]:
    rows = baselines.load_dir(ROOT / "baselines" / "study", "study")
    return [row for row in rows if row.has_value]


def test_every_study_model_has_a_parameter_count():
    assert set(STUDY_PARAMS) == set(STUDY_MODELS)


def test_pipelines_sharing_a_first_stage_pay_it_once_and_a_point_compresses_once():
    specs = ["wanda:0.5+gguf:Q4_K_M", "wanda:0.5+gguf:Q8_0"]
    planned = plan.build(
        [table2_row(spec, dataset) for spec in specs for dataset in ("wikitext2", "ptb")]
    )
    first, second = planned.points
    wanda = costs.stage_rate(Spec.parse("wanda:0.5").stages[0], "study")
    scale = costs.params("llama2-7b") / 1e9
    assert second.compress_seconds == pytest.approx(second.stage_seconds - wanda.point * scale)
    assert first.compress_seconds == pytest.approx(first.stage_seconds + first.first_seconds)
    compress = sum(point.stage_seconds * 2 + point.first_seconds for point in planned.points)
    evaluate = sum(point.evaluate_seconds for point in planned.points)
    assert planned.each_row_alone["GPU"] == pytest.approx(compress + evaluate)


def test_a_stage_rate_ignores_the_calibration_set_and_says_when_a_median_stands_in():
    calibrated = costs.stage_rate(Spec.parse("wanda:0.5[calib=ptb]").stages[0])
    assert calibrated == costs.stage_rate(Spec.parse("wanda:0.3").stages[0])
    assert calibrated.measured and calibrated.key == "wanda"
    unmeasured = costs.stage_rate(Spec.parse("slicegpt:0.2[recover=finetune]").stages[0])
    assert not unmeasured.measured and unmeasured.key.startswith("slicegpt")


def test_a_study_row_evaluates_the_whole_test_split():
    tokens = costs.table()["eval_tokens"]["wikitext2"]
    seconds = costs.evaluate_seconds(table2_row("dense"), 4096, None)
    rate = costs.table()["ppl_seconds_per_bparam_per_token"] / costs.gpu_speedup()
    assert seconds == pytest.approx(rate * 6.74 * (tokens // 4096) * 4096)


@pytest.mark.skipif(
    not (HAS_WIKITEXT and HAS_PTB and offline_file("arc/ARC-Easy-Test.jsonl"))
    or not (cache_dir() / "smollm2-135m").is_dir(),
    reason="needs MPT_DATA_DIR (wikitext-2, ptb, arc, mmlu) and the SmolLM2 cache",
)
def test_the_committed_cost_table_is_what_the_script_measures(tmp_path):
    out = tmp_path / "cost_table.json"
    assert load_script("cost_table").main(["--out", str(out)]) == 0
    assert json.loads(out.read_text()) == costs.table()
