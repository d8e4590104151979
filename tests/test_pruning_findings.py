"""The unstructured-pruning findings checker, run on the study's own tables and on made-up rows."""

from __future__ import annotations

from pathlib import Path

from mpt_core.baselines import BaselineRow, load_file
from mpt_core.study.findings import owl, pattern, ppl_points, ranking

STUDY = Path(__file__).resolve().parent.parent / "baselines" / "study"


def _row(spec: str, value: str, dataset: str = "wikitext2") -> BaselineRow:
    return BaselineRow(
        "smollm2-135m", dataset, spec, "ppl", value, None, None, "", 512, "test", "", "cpu"
    )


def _verdicts(findings) -> dict[str, str]:
    return {finding.label: finding.verdict for finding in findings}


def test_study_table2_ranks_admm_sparsegpt_wanda_magnitude_at_every_ratio():
    points = ppl_points(load_file(STUDY / "table2.csv", "study"), "wikitext2")
    assert _verdicts(ranking(points)) == {"0.5": "yes", "0.6": "yes", "0.7": "yes"}


def test_study_table2_patterns_hold_except_admm_whose_4_8_equals_its_2_4():
    verdicts = _verdicts(pattern(ppl_points(load_file(STUDY / "table2.csv", "study"), "wikitext2")))
    assert {verdicts[m] for m in ("magnitude", "wanda", "sparsegpt", "ria")} == {"yes"}
    assert verdicts["admm"] == "no: admm:4:8 7.589 >= admm:2:4 7.589"


def test_study_owl_helps_at_70_percent_in_table2_and_with_ptb_calibration_in_table3():
    table2 = _verdicts(owl(ppl_points(load_file(STUDY / "table2.csv", "study"), "wikitext2")))
    table3 = _verdicts(owl(ppl_points(load_file(STUDY / "table3.csv", "study"), "wikitext2")))
    assert table2["wanda"] == "yes"
    assert table3 == {"wanda": "yes", "sparsegpt": "yes"}


def test_a_broken_order_names_the_pair_and_its_numbers():
    rows = [_row(f"{m}:0.5", v) for m, v in [("magnitude", "40"), ("wanda", "50")]]
    rows += [_row("sparsegpt:0.5", "45"), _row("admm:0.5", "44")]
    assert (
        ranking(ppl_points(rows, "wikitext2"))[0].verdict == "no: wanda:0.5 50 >= magnitude:0.5 40"
    )


def test_missing_points_are_named_not_guessed():
    rows = [_row("wanda:0.5", "50"), _row("wanda:2:4", "90")]
    finding = pattern(ppl_points(rows, "wikitext2"))[0]
    assert finding.values == (50.0, None, 90.0)
    assert finding.verdict == "not recorded: wanda:4:8"


def test_points_come_from_one_dataset_single_stage_rows_and_the_first_file():
    rows = [
        _row("wanda:0.7", "100"),
        _row("wanda:0.7", "999"),
        _row("wanda:0.7", "1", dataset="ptb"),
        _row("wanda:0.7+rtn:4", "2"),
        _row("owl:0.7[base=wanda]", "80"),
    ]
    assert ppl_points(rows, "wikitext2") == {
        ("wanda", "0.7"): 100.0,
        ("owl[base=wanda]", "0.7"): 80.0,
    }
    assert _verdicts(owl(ppl_points(rows, "wikitext2"))) == {"wanda": "yes"}


def test_the_pattern_leaves_out_methods_without_nm_masks():
    rows = [_row("wanda:0.5", "50"), _row("shortgpt:0.5", "900"), _row("svd_llm:0.5", "99")]
    rows.append(_row("owl:0.5[base=wanda]", "55"))
    assert [finding.label for finding in pattern(ppl_points(rows, "wikitext2"))] == ["wanda"]
