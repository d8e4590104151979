"""The regression harness end to end: baselines -> parametrized tests -> verdicts -> report.

A tiny-llama CPU tier is recorded into a temporary baselines folder with the real
``mpt baselines record`` command, then ``pytest benchmarks`` runs against it in a
subprocess, exactly as a maintainer would run it.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mpt_core import baselines
from mpt_core.errors import BaselineError
from mpt_core.harness.curve_check import check_curve
from mpt_core.harness.curve_rows import baseline_curves
from mpt_core.verdict import check, footprint_changes

ROOT = Path(__file__).resolve().parent.parent
SEQLEN, WINDOWS = 64, 4


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "COLUMNS": "400"}


def _mpt(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mpt_core.cli", *args],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=ROOT,
        timeout=600,
    )


def _pytest(*args: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "pytest",
        "benchmarks",
        "--mpt-model",
        "tiny-llama",
        "--mpt-tier",
        "cpu",
        "-p",
        "no:cacheprovider",
        *args,
    ]
    return subprocess.run(
        command, capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=600
    )


@pytest.fixture(scope="module")
def tiny_baselines(tmp_path_factory) -> Path:
    """A baselines folder whose CPU tier is tiny-llama, recorded by the harness itself."""
    root = tmp_path_factory.mktemp("baselines")
    for family in ("quant", "semi"):
        out = root / "cpu" / "tiny-llama" / f"{family}.csv"
        result = _mpt(
            "baselines",
            "record",
            "--model",
            "tiny-llama",
            "--family",
            family,
            "--seqlen",
            str(SEQLEN),
            "--windows",
            str(WINDOWS),
            "--out",
            str(out),
        )
        assert result.returncode == 0, result.stderr
    return root


def _rows(path: Path) -> list[list[str]]:
    return [
        row
        for row in csv.reader(
            line for line in path.read_text().splitlines() if not line.startswith("#")
        )
    ]


def test_recorded_csv_has_metadata_and_grid(tiny_baselines):
    text = (tiny_baselines / "cpu" / "tiny-llama" / "quant.csv").read_text()
    assert "# command: mpt baselines record --model tiny-llama --family quant" in text
    assert f"# windows: {WINDOWS}" in text and "torch" in text
    rows = baselines.load_file(tiny_baselines / "cpu" / "tiny-llama" / "quant.csv", "cpu")
    assert {row.dataset for row in rows} == {"wikitext2", "ptb"}
    assert {row.spec for row in rows} >= {"dense", "rtn:4[group=64]", "rtn:2[group=64]"}
    assert all(row.is_numeric and row.seqlen == SEQLEN for row in rows)


def test_cpu_tier_passes_against_its_own_baselines(tiny_baselines, tmp_path):
    report = tmp_path / "report.md"
    result = _pytest(
        "--mpt-baselines",
        str(tiny_baselines),
        "-k",
        "test_ppl and quant",
        "-p",
        "no:randomly",
        "--mpt-report",
        str(report),
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert "16 passed" in result.stdout
    text = report.read_text()
    assert "| rtn[group=64] |" in text and "(+0.0%)" in text
    assert "16 passed, 0 failed" in text


def test_sabotaged_baseline_fails_exactly_that_test(tiny_baselines, tmp_path):
    sabotaged = tmp_path / "baselines"
    target = sabotaged / "cpu" / "tiny-llama" / "quant.csv"
    target.parent.mkdir(parents=True)
    lines = (tiny_baselines / "cpu" / "tiny-llama" / "quant.csv").read_text().splitlines()
    victim = next(i for i, line in enumerate(lines) if line.startswith("tiny-llama,ptb,rtn:3"))
    cells = next(csv.reader([lines[victim]]))
    baseline = float(cells[4]) * 1.5
    cells[4] = repr(baseline)
    lines[victim] = ",".join(f'"{c}"' if "," in c else c for c in cells)
    target.write_text("\n".join(lines) + "\n")
    result = _pytest(
        "--mpt-baselines", str(sabotaged), "-k", "test_ppl and quant", "-p", "no:randomly"
    )
    assert result.returncode == 1
    failed = [line for line in result.stdout.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1, result.stdout[-3000:]
    assert "tiny-llama-ptb-rtn:3[group=64]" in failed[0]
    message = failed[0]
    for word in ("measured", "baseline", "ratio", "tolerance"):
        assert word in message
    assert f"{baseline:.4f}" in message and "ratio 0.66" in message
    # the baseline was raised by half: the point is better than it, and the failure says so
    assert "improved beyond tolerance (re-record the baseline)" in message
    assert "regress" not in message.lower()


def test_another_window_count_is_a_protocol_error_not_a_verdict(tiny_baselines):
    """Measured on 2 windows against 4-window baselines: every point fails as "protocol
    differs", none is judged on its value; the baselines' own windows pass (above)."""
    result = _pytest(
        "--mpt-baselines", str(tiny_baselines), "-k", "test_ppl and quant", "-p", "no:randomly",
        "--mpt-windows", "2",
    )  # fmt: skip
    assert result.returncode == 1
    failed = [line for line in result.stdout.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 16, result.stdout[-3000:]
    assert all(f"protocol differs: windows 2 vs {WINDOWS}" in line for line in failed)


def test_selection_by_keyword_and_marker(tiny_baselines):
    args = ("--mpt-baselines", str(tiny_baselines), "--collect-only", "-q", "-p", "no:randomly")
    not_rtn = _pytest(*args, "-k", "test_ppl and quant and not rtn").stdout
    assert "rtn" not in not_rtn.split("tests collected")[0] and "dense" in not_rtn
    semi = _pytest(*args, "-m", "cpu and unstructured").stdout
    ids = [line for line in semi.splitlines() if "::" in line]
    assert ids and all("magnitude:" in line or "dense" in line for line in ids)
    assert {"4:8" in line for line in ids} == {True, False}


def test_random_order_gives_the_same_values(tiny_baselines, tmp_path):
    values = []
    for order_args in (("-p", "no:randomly"), ("--randomly-seed", "12345")):
        results = tmp_path / f"results{len(values)}.jsonl"
        outcome = _pytest(
            "--mpt-baselines",
            str(tiny_baselines),
            "-k",
            "test_ppl and (quant or semi)",
            "--mpt-results",
            str(results),
            *order_args,
        )
        assert outcome.returncode == 0, outcome.stdout[-2000:]
        records = [json.loads(line) for line in results.read_text().splitlines()]
        values.append({(r["spec"], r["dataset"]): r["value"] for r in records})
    assert values[0] == values[1] and len(values[0]) >= 18


def test_gpu_tier_collects_one_test_per_numeric_study_cell():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "benchmarks",
            "--collect-only",
            "-q",
            "-m",
            "gpu",
            "-p",
            "no:randomly",
        ],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=ROOT,
        timeout=300,
    )
    collected = [line for line in result.stdout.splitlines() if "::" in line]
    points = [line for line in collected if "::test_ptp[" not in line]
    curves = [line for line in collected if "::test_ptp[" in line]
    study = baselines.load_dir(ROOT / "baselines" / "study", "study")
    assert len(points) == sum(row.has_value for row in study)
    assert len(curves) == len(baseline_curves([row for row in study if row.has_value])) > 0
    assert (
        "benchmarks/test_unstructured.py::test_ppl[llama2-7b-wikitext2-wanda:0.5-table2]"
        in collected
    )


@pytest.mark.parametrize(
    ("measured", "baseline", "dense", "outcome", "regime"),
    [
        (10.1, 10.0, 5.0, "ok", "stable"),
        (10.3, 10.0, 5.0, "regressed", "stable"),
        (9.7, 10.0, 5.0, "improved", "stable"),
        (float("inf"), 10.0, 5.0, "regressed", "stable"),
        (float("nan"), 10.0, 5.0, "regressed", "stable"),
        (900.0, 400.0, 5.0, "still collapsed", "collapsed"),
        (150.0, 400.0, 5.0, "still collapsed", "collapsed"),
        (5000.0, 400.0, 5.0, "regressed", "collapsed"),
        (100.0, 400.0, 5.0, "improved", "collapsed"),
        (float("inf"), 400.0, 5.0, "regressed", "collapsed"),
        (float("nan"), 400.0, 5.0, "regressed", "collapsed"),
        (20.0, 400.0, 5.0, "left collapse", "collapsed"),
        (float("nan"), float("inf"), 5.0, "still collapsed", "collapsed"),
        (900.0, float("inf"), 5.0, "still collapsed", "collapsed"),
        (20.0, float("inf"), 5.0, "left collapse", "collapsed"),
    ],
)
def test_verdict_regimes(measured, baseline, dense, outcome, regime):
    verdict = check(measured, baseline, dense_measured=dense, dense_baseline=dense)
    assert (verdict.outcome, verdict.regime) == (outcome, regime)
    assert verdict.passed == (outcome in ("ok", "still collapsed"))
    assert verdict.message.startswith(outcome)


def test_a_protocol_difference_is_its_own_verdict():
    verdict = check(10.0, 10.0, protocol=("windows 4 vs 8",))
    assert verdict.outcome == "protocol differs" and not verdict.passed
    assert verdict.message == "protocol differs: windows 4 vs 8 (measured vs baseline)"


def test_accuracy_is_better_when_higher_and_never_collapses():
    assert check(0.50, 0.40, rtol=0.02, dense_baseline=0.6, higher_is_better=True).outcome == (
        "improved"
    )
    assert check(0.30, 0.40, dense_baseline=0.04, higher_is_better=True).regime == "stable"


def test_a_changed_footprint_fails_even_when_the_value_passes():
    changes = footprint_changes(
        {"bytes": 100.0, "bits_per_weight": 4.5, "sparsity": 0.0},
        {"bytes": 100.0, "bits_per_weight": 4.25, "sparsity": 0.0},
    )
    assert changes == ("bits_per_weight 4.5 vs baseline 4.25",)
    verdict = check(10.0, 10.0, footprint=changes)
    assert not verdict.passed and verdict.outcome == "footprint changed"
    assert "bits_per_weight 4.5 vs baseline 4.25" in verdict.message
    assert footprint_changes(None, {"bytes": 1.0}) == ()
    near = footprint_changes({"sparsity": 0.3443531}, {"sparsity": 0.3443540})
    assert near == ()  # float order flips a few rounding zeros: not a change
    assert footprint_changes({"sparsity": 0.45}, {"sparsity": 0.5}) != ()


def test_recovery_gate_fails_a_point_that_keeps_less_than_asked():
    kept = check(10.1, 10.0, dense_measured=4.0, dense_baseline=5.0, min_recovery=0.9)
    assert kept.outcome == "recovery below gate" and not kept.passed
    assert check(10.1, 10.0, dense_measured=5.0, dense_baseline=5.0, min_recovery=0.9).passed


def test_verdict_tells_library_shift_from_broken_compression():
    shifted = check(10.6, 10.0, dense_measured=5.3, dense_baseline=5.0)
    assert not shifted.passed and "dense moved alike" in shifted.message
    broken = check(10.6, 10.0, dense_measured=5.0, dense_baseline=5.0)
    assert not broken.passed and "compression moved" in broken.message
    assert "measured 10.6000 vs baseline 10.0000, ratio 1.0600" in broken.message


def test_rtol_is_applied():
    assert not check(10.3, 10.0).passed
    assert check(10.3, 10.0, rtol=0.05).passed


HEADER = ",".join(baselines.HEADER)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("model,spec\nx,dense\n", "header must be"),
        (f"{HEADER}\nm,wikitext2,dense,ppl,5.0\n", ":2: expected 10 cells"),
        (f"{HEADER}\nm,wikitext2,dense,ppl,five,,,,512,s\n", ":2:"),
        (f"{HEADER}\nm,wikitext2,wanda:1.5,ppl,5.0,,,,512,s\n", "ratio 1.5"),
        (f"{HEADER}\nm,wikitext2,dense,ppl,5.0,,,,long,s\n", ":2:"),
    ],
)
def test_malformed_baseline_file_is_one_clear_error(tmp_path, content, fragment):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(BaselineError, match=fragment.replace("(", r"\(")) as error:
        baselines.load_file(path, "cpu")
    assert str(path) in str(error.value)


def test_row_families_route_rows_to_modules():
    assert baselines.row_family("wanda:0.5", "ppl") == "unstructured"
    assert baselines.row_family("wanda:2:4", "ppl") == "semi"
    assert baselines.row_family("sparsegpt:0.5+gptq:4", "ppl") == "combined"
    assert baselines.row_family("gguf:Q4_K_M", "acc") == "downstream"
    assert baselines.row_family("asvd:0.1", "ppl") == "lowrank"
    assert baselines.row_family("slicegpt:0.3[recover=finetune]", "ppl") == "structured"


def test_registered_families_agree_with_the_study_map():
    from mpt_core import registry

    for name in registry.names():
        assert baselines.METHOD_FAMILIES[name] == registry.get(name).family


def _curve(s0: float, k: float, x: np.ndarray) -> np.ndarray:
    return np.where(x <= s0, 10 + 8 * x**2, (10 + 8 * s0**2) * np.exp(k * (x - s0)))


def test_moved_knee_fails_the_curve_test_while_every_point_passes():
    x = np.round(np.arange(0, 0.81, 0.1), 2)
    baseline = np.array([10, 10.1, 10.3, 10.7, 11.5, 13.0, 20.0, 150.0, 2000.0])
    measured = baseline * np.array([1, 1, 1, 1, 1.019, 1.019, 1.019, 1, 1])
    measured[-2:] = [449.0, 667.0]  # still collapsed: within the 3x band, differently chaotic
    points = [
        check(m, b, dense_measured=measured[0], dense_baseline=baseline[0])
        for m, b in zip(measured, baseline, strict=True)
    ]
    assert all(point.passed for point in points)
    verdict = check_curve("magnitude", (x, baseline), (x, measured), ptp_tol=0.05)
    assert abs(verdict.shift) > 0.06 and not verdict.passed
    assert f"measured s0 {verdict.measured.s0:.3f}" in verdict.message
    assert f"baseline s0 {verdict.baseline.s0:.3f}" in verdict.message
    unchanged = check_curve("magnitude", (x, baseline), (x, baseline.copy()), ptp_tol=0.05)
    assert unchanged.passed and unchanged.shift == 0


def test_knee_moved_with_disjoint_intervals_fails_without_a_shift_tolerance():
    x = np.round(np.arange(0, 0.81, 0.05), 2)
    verdict = check_curve("m", (x, _curve(0.6, 30, x)), (x, _curve(0.5, 30, x)))
    assert not verdict.overlap and not verdict.passed and "overlap no" in verdict.message


def test_history_of_three_real_runs_and_compare(tiny_baselines, tmp_path):
    history = tmp_path / "history"
    for _ in range(3):
        outcome = _pytest(
            "--mpt-baselines",
            str(tiny_baselines),
            "-k",
            "test_ppl and quant",
            "-p",
            "no:randomly",
            "--mpt-history",
            str(history),
        )
        assert outcome.returncode == 0, outcome.stdout[-2000:]
    runs = sorted(history.glob("run-*.jsonl"))
    assert len(runs) == 3
    shown = _mpt("history", str(history), "--plot", str(tmp_path / "figures"))
    assert shown.returncode == 0, shown.stderr
    assert "run 1 |" in shown.stdout and "run 3 |" in shown.stdout
    assert "tiny-llama wikitext2 rtn:4[group=64]" in shown.stdout
    assert "0 step changes" in shown.stdout
    assert (tmp_path / "figures" / "history-ppl.png").stat().st_size > 1000
    edited = tmp_path / "run-later.jsonl"
    records = [json.loads(line) for line in runs[2].read_text().splitlines()]
    for record in records:
        record["versions"]["transformers"] = "9.99.0"
        if record["spec"] == "rtn:3[group=64]" and record["dataset"] == "ptb":
            record["value"] *= 1.25
    edited.write_text("".join(json.dumps(record) + "\n" for record in records))
    compared = _mpt("compare", str(runs[0]), str(edited))
    assert compared.returncode == 0, compared.stderr
    assert "transformers 5." in compared.stdout and "→ 9.99.0" in compared.stdout
    assert "1 points moved" in compared.stdout
    assert "tiny-llama ptb rtn:3[group=64]" in compared.stdout


def test_a_chaotic_point_is_named_in_its_message():
    calm = check(10.1, 10.0, noise=0.001)
    wild = check(10.1, 10.0, rtol=0.3, noise=0.1)
    assert not calm.chaotic and "chaotic" not in calm.message
    assert wild.chaotic and "chaotic point (noise floor 10.0%)" in wild.message


def _windows_record(value: float, losses: list[float]):
    from mpt_core.records import Record

    return Record(
        "m", "h", "rtn:4", "wikitext2", 64, len(losses), "ppl", value, 0.0, {}, {}, "cpu",
        "float32", window_losses=losses,
    )  # fmt: skip


def test_paired_windows_forgive_a_change_their_interval_cannot_place_outside_tolerance():
    import math

    from mpt_core.verdict import judge

    base = [3.0, 3.1, 2.9, 3.2, 3.0, 2.8, 3.1, 3.0]
    noisy = [b + d for b, d in zip(base, [0.2, -0.15, 0.1, -0.05, 0.18, -0.1, 0.05, -0.07])]
    value = lambda losses: math.exp(sum(losses) / len(losses))  # noqa: E731
    verdict = judge(_windows_record(value(noisy), noisy), value(base), baseline_losses=base)
    assert verdict.paired is not None and verdict.passed  # 2.0% mean change, +-11% interval
    shifted = [b + 0.05 for b in base]  # every window 5% worse: the interval is a point
    moved = judge(_windows_record(value(shifted), shifted), value(base), baseline_losses=base)
    assert moved.outcome == "regressed" and "paired windows" in moved.message
    edited = judge(_windows_record(value(base) * 1.25, base), value(base), baseline_losses=base)
    assert edited.paired is None and edited.outcome == "regressed"  # value apart from windows
