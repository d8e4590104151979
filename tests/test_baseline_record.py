"""Grid files of the CPU tier: specs checked at read time, datasets from the grid."""

from __future__ import annotations

import pytest

from mpt_core.baseline_record import CPU_DATASETS, GRIDS_DIR, grid_datasets, read_grid
from mpt_core.errors import BaselineError


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
