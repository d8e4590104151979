"""Grid files of the CPU tier: specs checked at read time, datasets from the grid."""

from __future__ import annotations

import pytest

from mpt_core.errors import BaselineError
from mpt_core.harness.baseline_record import (
    CPU_DATASETS,
    GRIDS_DIR,
    csv_text,
    grid_datasets,
    read_grid,
)
from mpt_core.records import Record


def test_grid_datasets_line_overrides_the_default(tmp_path):
    grid = tmp_path / "g.txt"
    grid.write_text("# datasets: wikitext2\ndense\nwanda:0.5+gguf:Q4_K_M\n")
    assert grid_datasets(grid) == ["wikitext2"]
    assert read_grid(grid) == ["dense", "wanda:0.5+gguf:Q4_K_M"]
    grid.write_text("dense\n")
    assert grid_datasets(grid) == list(CPU_DATASETS)


def test_a_bad_spec_names_its_line(tmp_path):
    grid = tmp_path / "g.txt"
    grid.write_text("dense\nwanda:1.5\n")
    with pytest.raises(BaselineError, match=r"g\.txt:2"):
        read_grid(grid)


@pytest.mark.parametrize("grid", sorted(GRIDS_DIR.glob("*.txt")), ids=lambda path: path.stem)
def test_every_shipped_grid_parses_and_starts_with_dense(grid):
    specs = read_grid(grid)
    assert specs[0] == "dense" and len(specs) == len(set(specs))


def _record(spec: str, settings: list[dict]) -> Record:
    return Record(
        "m",
        "h",
        spec,
        "wikitext2",
        512,
        8,
        "ppl",
        30.0,
        1.0,
        {"relative_size": 1.0},
        {},
        "cpu",
        "float32",
        settings=settings,
    )


def test_protocol_line_states_calibration_count_length_and_split():
    records = [
        _record("dense", []),
        _record("wanda:0.5", [{"stage": "wanda:0.5", "calib": "ptb", "nsamples": 32}]),
        _record("rtn:4", [{"stage": "rtn:4", "group": None}]),
    ]
    text = csv_text(records, "unstructured", "cmd")
    assert "calibration 32 x 512 tokens of ptb validation\n" in text
    assert "no calibrated stage" in csv_text(records[::2], "quant", "cmd")
