"""``mpt compare`` and ``mpt history`` judge with the regression suite's verdict and see
every library that touched a point (issue #19)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mpt_core.cli import main

ROOT = Path(__file__).resolve().parent.parent
GRID = ROOT / "baselines/cpu/smollm2-135m/quant-gguf.records.jsonl"


def _run(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def _bumped(records: list[dict], factor: float) -> list[dict]:
    """The same run after a llama-cpp-python update that moved Q4_K_M by ``factor``."""
    later = json.loads(json.dumps(records))
    for record in later:
        for stage in record["settings"]:
            if "library" in stage:
                stage["library"] = "llama-cpp-python 0.3.99"
        if record["spec"] == "gguf:Q4_K_M" and record["dataset"] == "wikitext2":
            record["value"] *= factor
    return later


@pytest.fixture
def earlier() -> list[dict]:
    return [json.loads(line) for line in GRID.read_text(encoding="utf-8").splitlines()]


def test_a_llama_cpp_update_that_moves_q4_k_m_is_named_and_fails(earlier, tmp_path, capsys):
    before = _run(tmp_path / "a.jsonl", earlier)
    after = _run(tmp_path / "b.jsonl", _bumped(earlier, 1.15))
    assert main(["compare", str(before), str(after), "--fail-on", "moved"]) == 1
    out = capsys.readouterr().out
    assert "llama-cpp-python 0.3.36 → 0.3.99" in out
    assert "1 points moved" in out and "smollm2-135m wikitext2 gguf:Q4_K_M" in out
    assert "regressed" in out
    assert main(["compare", str(before), str(after), "--fail-on", "regressed"]) == 1
    assert main(["compare", str(before), str(after)]) == 0


def test_an_improvement_fails_moved_but_not_regressed(earlier, tmp_path, capsys):
    before = _run(tmp_path / "a.jsonl", earlier)
    after = _run(tmp_path / "b.jsonl", _bumped(earlier, 0.85))
    assert main(["compare", str(before), str(after), "--fail-on", "moved"]) == 1
    assert main(["compare", str(before), str(after), "--fail-on", "regressed"]) == 0
    assert "improved" in capsys.readouterr().out


def test_identical_runs_pass_every_gate(earlier, tmp_path, capsys):
    before = _run(tmp_path / "a.jsonl", earlier)
    assert main(["compare", str(before), str(before), "--fail-on", "moved"]) == 0
    out = capsys.readouterr().out
    assert "library versions: identical" in out and "0 points moved" in out


def test_a_changed_footprint_is_a_move_even_at_the_same_value(earlier, tmp_path, capsys):
    later = json.loads(json.dumps(earlier))
    for record in later:
        if record["spec"] == "gguf:Q4_K_M":
            record["footprint"]["bits_per_weight"] += 0.5
    before, after = _run(tmp_path / "a.jsonl", earlier), _run(tmp_path / "b.jsonl", later)
    assert main(["compare", str(before), str(after), "--fail-on", "regressed"]) == 1
    assert "footprint changed" in capsys.readouterr().out


def test_runs_of_different_protocols_are_not_compared(earlier, tmp_path, capsys):
    later = json.loads(json.dumps(earlier))
    for record in later:
        record["windows"] = 4
    before, after = _run(tmp_path / "a.jsonl", earlier), _run(tmp_path / "b.jsonl", later)
    assert main(["compare", str(before), str(after)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("protocol differs: windows 8 vs 4")
    assert "library" not in out.split(":", 1)[1].split("so no move")[0]
