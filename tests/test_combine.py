"""Combined compression grids: sizes, Pareto front, PTP lines, safe region, recommender."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mpt_core.analysis.combine import (
    Cell,
    build_grid,
    is_safe,
    pareto_front,
    recommend,
    safe_region,
    safety,
    select_setting,
    with_measured_bits,
)
from mpt_core.analysis.curves import read_points
from mpt_core.errors import FitError

ROOT = Path(__file__).resolve().parent.parent
GRID = ROOT / "fixtures" / "curves" / "grid.csv"
TABLE10 = ROOT / "baselines" / "study" / "table10.csv"


@pytest.fixture(scope="module")
def grid():
    return build_grid(read_points(GRID))


def test_sizes_come_from_the_size_column(grid) -> None:
    cell = next(c for c in grid.cells if c.spec == "wanda:0.3+rtn:3")
    assert cell.size == pytest.approx(0.1312) and cell.measured_size
    assert grid.reference == 10.0


def test_the_pareto_front_is_undominated_and_ordered(grid) -> None:
    front = pareto_front(grid.cells)
    for cell in front:
        assert not any(o.size <= cell.size and o.value < cell.value for o in grid.cells)
    assert [c.size for c in front] == sorted(c.size for c in front)
    assert all(a.value > b.value for a, b in zip(front, front[1:], strict=False))
    assert front[0].spec == "wanda:0.7+rtn:2"  # the smallest cell is always on the front


def test_the_transition_line_finds_the_pruning_knee_at_every_quantization_level(grid) -> None:
    for (method, quant), fit in grid.along_ratio.items():
        assert method == "wanda"
        assert fit is not None and fit.has_transition, quant
        assert abs(fit.s0 - 0.55) <= 0.1, quant  # the grid's step


def test_the_quantization_knee_lies_between_2_and_4_bits(grid) -> None:
    fit = grid.along_bits[("wanda", 0.5)]
    assert fit.has_transition and 2.0 < fit.s0_bits < 4.0


def test_safe_cells_lie_below_both_knees(grid) -> None:
    safe = {c.spec for c in safe_region(grid)}
    assert "wanda:0.5+rtn:4" in safe
    assert "wanda:0.7+rtn:4" not in safe  # past the pruning knee
    assert "wanda:0.2+rtn:2" not in safe  # past the quantization knee


@pytest.mark.parametrize(("budget", "spec"), [(0.05, "wanda:0.1+rtn:4"), (0.20, "wanda:0.5+rtn:4")])
def test_recommend_picks_the_smallest_cell_within_the_budget(grid, budget, spec) -> None:
    rec = recommend(grid, budget)
    assert rec.cell.spec == spec
    assert rec.increase <= budget
    smaller = [c for c in grid.cells if c.size < rec.cell.size]
    assert all(c.value > grid.reference * (1 + budget) for c in smaller)


def test_without_a_dense_point_there_is_no_increase_to_budget() -> None:
    points = [p for p in read_points(GRID) if not p.spec.is_dense]
    with pytest.raises(FitError, match="no uncompressed"):
        recommend(build_grid(points), 0.05)


def test_a_results_jsonl_record_gives_its_footprint_as_size(tmp_path) -> None:
    records = [
        {
            "model": "m",
            "dataset": "d",
            "metric": "ppl",
            "spec": "dense",
            "value": 10.0,
            "footprint": {"bytes": 200.0, "fp16_bytes": 200.0},
        },
        {
            "model": "m",
            "dataset": "d",
            "metric": "ppl",
            "spec": "rtn:4",
            "value": 10.4,
            "footprint": {"bytes": 60.0, "fp16_bytes": 200.0},
        },
    ]
    path = tmp_path / "results.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    points = read_points(path)
    assert [p.size for p in points] == [1.0, 0.3]
    rec = recommend(build_grid(points), 0.05)
    assert rec.cell.spec == "rtn:4" and rec.cell.size == 0.3


def test_several_settings_must_be_chosen_between() -> None:
    points = read_points(ROOT / "baselines" / "study" / "table8.csv")
    with pytest.raises(FitError, match="several settings"):
        select_setting(points, None, None)
    assert {p.dataset for p in select_setting(points, None, "ptb")} == {"ptb"}


def test_table10_headline_cell_is_the_smallest_within_25_percent() -> None:
    """The study's Wanda 50% + Q3_K_M at 11.4% of FP16: the recommender finds it, and the
    fitted quantization knee (3.72 effective bits at 50%) puts Q3_K_M (3.64) just past it."""
    grid = build_grid(select_setting(read_points(TABLE10), None, None))
    rec = recommend(grid, 0.25)
    assert rec.cell.spec == "wanda:0.5+gguf:Q3_K_M" and rec.cell.size == pytest.approx(0.114)
    assert rec.cell.ratio < grid.along_ratio[("wanda", "gguf:Q3_K_M")].s0_low
    knee = grid.along_bits[("wanda", 0.5)]
    assert 16 * (1 - rec.cell.x_bits) < knee.s0_bits < 16 * (1 - 0.7185)  # Q3_K_M < s0 < Q4_K_M
    assert not rec.safe
    assert recommend(grid, 0.25, safe_only=True).cell.spec == "wanda:0.5+gguf:Q4_K_M"


def _cell(spec: str, ratio: float, quant: str, size: float) -> Cell:
    return Cell(spec, "wanda" if ratio else "", ratio, quant, 0.75, 10.0, size, True)


def test_bits_of_a_format_that_stores_zeros_densely_come_from_its_size() -> None:
    """llama.cpp keeps pruned zeros: a pruned Q4_K_M cell is as large as Q4_K_M alone, so
    its level sits at that size (dividing by 1 - ratio would move it to 0.77 of FP16)."""
    dense_zeros = [_cell("gguf:Q4_K_M", 0.0, "Q4_K_M", 0.385)] + [
        _cell(f"wanda:{r}+gguf:Q4_K_M", r, "Q4_K_M", 0.385) for r in (0.3, 0.5)
    ]
    assert {round(c.x_bits, 6) for c in with_measured_bits(dense_zeros)} == {0.615}
    shrinking = [_cell("gguf:Q4_K_M", 0.0, "Q4_K_M", 0.4)] + [
        _cell(f"wanda:{r}+gguf:Q4_K_M", r, "Q4_K_M", 0.4 * (1 - r)) for r in (0.3, 0.5)
    ]
    assert {round(c.x_bits, 6) for c in with_measured_bits(shrinking)} == {0.6}


def test_safety_says_unfitted_where_a_line_is_too_short_to_fit() -> None:
    points = select_setting(read_points(TABLE10), None, None)
    full = build_grid(points)
    verdicts = {cell.spec: safety(full, cell) for cell in full.cells}
    assert verdicts["wanda:0.7+gguf:Q2_K"] == "no" and "yes" in verdicts.values()
    assert all(
        (verdict == "no") == (not is_safe(full, cell))
        for cell, verdict in zip(full.cells, verdicts.values(), strict=True)
    )
    few = [
        p
        for p in points
        if str(p.spec) in ("dense", "gguf:Q8_0", "gguf:Q4_K_M", "wanda:0.1")
        or str(p.spec) in ("wanda:0.1+gguf:Q8_0", "wanda:0.1+gguf:Q4_K_M")
    ]
    short = build_grid(few)
    piped = [cell for cell in short.cells if cell.method and cell.quant != "fp16"]
    assert piped and {safety(short, cell) for cell in piped} == {"unfitted"}
