"""scripts/compress_time_table.py: the README's compression-time table from records."""

from __future__ import annotations

from scripts_loader import load_script

from mpt_core.records import Record, append


def record(
    spec: str, seconds: float, created: str, dataset: str = "wikitext2", evaluate: float = 0.0
) -> Record:
    return Record(
        "m",
        "h",
        spec,
        dataset,
        64,
        4,
        "ppl",
        1.0,
        0.1,
        {},
        {"compress": seconds, "evaluate": evaluate},
        "cpu",
        "float32",
        created=created,
    )


def test_fastest_run_per_point_median_per_method_and_since(tmp_path):
    path = tmp_path / "r.jsonl"
    for item in (
        record("wanda:0.5", 90.0, "2026-01-02T00:00:00"),
        record("wanda:0.5", 70.0, "2026-01-02T00:00:00", "ptb"),
        record("wanda:0.3", 80.0, "2026-01-02T00:00:00"),
        record("wanda:2:4", 100.0, "2026-01-02T00:00:00"),
        record("wanda:0.7", 5.0, "2026-01-01T00:00:00"),
        record("wanda:0.5+rtn:4", 1.0, "2026-01-02T00:00:00"),
        record("dense", 0.0, "2026-01-02T00:00:00"),
        record("gptq:4[group=64]", 30.0, "2026-01-02T00:00:00"),
    ):
        append(path, item)
    script = load_script("compress_time_table")
    times = script.fastest_times([str(path)], since="2026-01-02")
    level_seconds = {
        method: {stage.level_str(): seconds for stage, seconds in levels.items()}
        for method, levels in times.items()
    }
    assert level_seconds == {
        "wanda": {"0.5": 70.0, "0.3": 80.0, "2:4": 100.0},
        "gptq[group=64]": {"4": 30.0},
    }
    table = script.render(times)
    assert "| `wanda`          | 0.3, 0.5, 2:4 |         80 | 70–100    |" in table


def test_sweep_counts_each_compression_once_and_each_evaluation(tmp_path, capsys):
    path = tmp_path / "r.jsonl"
    for item in (
        record("wanda:0.5", 90.0, "2026-01-02T00:00:00", evaluate=10.0),
        record("wanda:0.5", 90.0, "2026-01-02T00:00:00", "ptb", evaluate=20.0),
        record("wanda:0.5", 60.0, "2026-01-03T00:00:00", evaluate=8.0),
        record("dense", 0.0, "2026-01-02T00:00:00", evaluate=30.0),
    ):
        append(path, item)
    script = load_script("compress_time_table")
    assert script.sweep_seconds([str(path)]) == (2, 60.0, 8.0 + 20.0 + 30.0)
    assert script.main([str(path), "--sweep"]) == 0
    assert capsys.readouterr().out == "2 points: compression 1 min + evaluation 1 min = 2 min\n"
