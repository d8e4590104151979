"""Points from baseline CSVs and their grouping into curves."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from mpt_core.analysis.curves import HEADER, group_curves, merge_repeats, read_points, scheme_bits
from mpt_core.errors import BaselineError

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "curves"


def write(tmp_path: Path, *rows: str) -> Path:
    path = tmp_path / "t.csv"
    path.write_text(",".join(HEADER) + "\n" + "".join(f"{row}\n" for row in rows))
    return path


def test_dense_starts_each_curve_collapsed_points_stay_and_unmeasured_ones_go() -> None:
    curves = {c.key.label: c for c in group_curves(read_points(FIXTURES / "synthetic.csv"))}
    assert set(curves) == {"knee", "smooth"}  # the knee:2:4 row joins no curve
    knee, smooth = curves["knee"], curves["smooth"]
    assert knee.x[0] == 0.0 and knee.y[0] == 10.0 and knee.specs[0] == "dense"
    assert knee.x[-1] == 0.9 and math.isnan(knee.y[-1])
    assert smooth.x[-1] == pytest.approx(0.8)  # smooth:0.9 is '-'


def test_a_pipeline_lies_on_one_curve_per_stage_with_the_other_stage_fixed(tmp_path) -> None:
    path = write(
        tmp_path,
        "m,wikitext2,wanda:0.5,ppl,7.25,,50,pct_fp16,unknown,s",
        "m,wikitext2,gguf:Q4_K_M,ppl,6.24,,28,pct_fp16,unknown,s",
        "m,wikitext2,wanda:0.5+gguf:Q4_K_M,ppl,7.33,,14.1,pct_fp16,unknown,s",
        "m,wikitext2,wanda:0.5+gguf:Q3_K_M,ppl,7.50,,11.4,pct_fp16,unknown,s",
    )
    curves = {(c.key.label, c.key.axis): c for c in group_curves(read_points(path))}
    along_bits = curves[("gguf + wanda:0.5", "bits")]
    assert np.allclose(along_bits.x, [0.0, 1 - 4 / 16, 1 - 3 / 16])  # wanda:0.5 alone is x = 0
    along_ratio = curves[("wanda + gguf:Q4_K_M", "ratio")]
    assert np.allclose(along_ratio.x, [0.0, 0.5]) and along_ratio.y[0] == 6.24
    assert read_points(path)[2].size == pytest.approx(0.141)


@pytest.mark.parametrize(
    ("scheme", "bits"), [("Q4_K_M", 4), ("IQ2_M", 2), ("Q8_0", 8), ("FP16", 16)]
)
def test_scheme_bits_are_the_nominal_width(scheme, bits) -> None:
    assert scheme_bits(scheme) == bits


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (("m,d,wanda:0.5,ppl,abc,,,,u,s",), "value 'abc' is not a number"),
        (("m,d,wanda:0.5,ppl,1.0,,,u",), "8 fields, expected 10"),
        (("m,d,wanda:1.5,ppl,1.0,,,,u,s",), "t.csv:2:"),
    ],
)
def test_bad_rows_name_the_file_and_line(tmp_path, rows, message) -> None:
    with pytest.raises(BaselineError, match=message):
        read_points(write(tmp_path, *rows))


def test_a_wrong_header_is_named(tmp_path) -> None:
    path = tmp_path / "h.csv"
    path.write_text("model,spec,value\nm,dense,1\n")
    with pytest.raises(BaselineError, match="header 'model,spec,value' is not"):
        read_points(path)


def test_cpu_tier_csv_metadata_lines_are_skipped(tmp_path):
    from mpt_core.analysis.curves import is_baseline_csv, read_points

    path = tmp_path / "quant.csv"
    rows = "".join(
        f"m,wikitext2,{spec},ppl,{value},,,,512,s\n"
        for spec, value in [("dense", 10), ("rtn:8", 10.1), ("rtn:4", 11), ("rtn:3", 14)]
    )
    path.write_text(
        "# command: mpt baselines record\n# windows: 8\n" + ",".join(HEADER) + "\n" + rows
    )
    assert is_baseline_csv(path)
    assert [point.value for point in read_points(path)] == [10, 10.1, 11, 14]


def test_a_point_recorded_twice_counts_once_as_the_mean(tmp_path) -> None:
    """Two grids of one protocol that both hold sparsegpt:0.3 must not break its fit."""
    path = write(
        tmp_path,
        "m,wikitext2,dense,ppl,30.0,,100,pct_fp16,unknown,s",
        "m,wikitext2,sparsegpt:0.3,ppl,36.5,,80,pct_fp16,unknown,s",
        "m,wikitext2,sparsegpt:0.5,ppl,70.0,,70,pct_fp16,unknown,s",
        "m,wikitext2,sparsegpt:0.3,ppl,36.3,,80,pct_fp16,unknown,s",
        "m,ptb,sparsegpt:0.3,ppl,80.0,,80,pct_fp16,unknown,s",
    )
    merged = merge_repeats(read_points(path))
    assert [str(p.spec) for p in merged] == [
        "dense",
        "sparsegpt:0.3",
        "sparsegpt:0.5",
        "sparsegpt:0.3",
    ]
    assert merged[1].value == pytest.approx(36.4) and merged[1].source == "mean of 2 measurements"
    assert merged[3].value == 80.0 and merged[3].dataset == "ptb"
    (curve,) = [c for c in group_curves(merged) if c.key.dataset == "wikitext2"]
    assert list(curve.y) == pytest.approx([30.0, 36.4, 70.0])
