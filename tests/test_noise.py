"""Noise floors (issue #19): a point's spread under float-order perturbations, recorded
beside its grid, sets the least tolerance its verdict may use."""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path

import pytest
import torch

from mpt_core import baselines
from mpt_core.engine import layerwise
from mpt_core.errors import BaselineError
from mpt_core.harness import noise, policy
from mpt_core.verdict import DEFAULT_RTOL, NOISE_MULTIPLE

TINY = Path(__file__).resolve().parent.parent / "baselines" / "cpu" / "tiny-llama"


def _row(**fields) -> baselines.BaselineRow:
    base = dict(
        model="m", dataset="wikitext2", spec="rtn:4", metric="ppl", raw_value="10",
        stderr=0.1, size=None, size_unit="", seqlen=64, source="", table="quant", tier="cpu",
    )  # fmt: skip
    return baselines.BaselineRow(**(base | fields))


def test_spread_is_the_relative_range_over_baseline_and_perturbations():
    assert noise.spread(10.0, [10.0, 10.1, 9.9]) == pytest.approx(0.02)
    assert noise.spread(10.0, []) == 0.0
    assert noise.spread(math.inf, [math.inf]) == 0.0
    assert noise.spread(10.0, [math.nan]) == math.inf


def test_perturbed_sets_and_restores_threads_and_calibration_batch():
    threads, batch = torch.get_num_threads(), layerwise.CALIBRATION_BATCH
    with noise.perturbed(1, 1):
        assert (torch.get_num_threads(), layerwise.CALIBRATION_BATCH) == (1, 1)
    assert (torch.get_num_threads(), layerwise.CALIBRATION_BATCH) == (threads, batch)


def test_tolerance_takes_the_option_then_the_file_then_the_default_never_under_the_noise():
    assert policy.tolerance(_row(), None) == DEFAULT_RTOL
    assert policy.tolerance(_row(rtol=1e-4), None) == 1e-4
    assert policy.tolerance(_row(rtol=1e-4), 0.0) == 0.0  # --mpt-rtol 0 means 0
    assert policy.tolerance(_row(rtol=1e-4), None, noise=1e-3) == NOISE_MULTIPLE * 1e-3
    assert policy.tolerance(_row(rtol=1e-4), None, noise=math.inf) == 1e-4


def test_a_declared_rtol_is_read_and_a_bad_one_is_one_line(tmp_path):
    lines = (TINY / "combined.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    text = "".join(line for line in lines if not line.startswith(("# rtol:", "# min_recovery:")))
    good = tmp_path / "combined.csv"
    good.write_text("# rtol: 0.0001\n" + text, encoding="utf-8")
    assert {row.rtol for row in baselines.load_file(good, "cpu")} == {1e-4}
    gated = tmp_path / "semi.csv"
    gated.write_text("# min_recovery: 0.95\n" + text, encoding="utf-8")
    assert {row.min_recovery for row in baselines.load_file(gated, "cpu")} == {0.95}
    bad = tmp_path / "quant.csv"
    bad.write_text("# rtol: tight\n" + text, encoding="utf-8")
    with pytest.raises(BaselineError, match=r"quant.csv: # rtol: 'tight'"):
        baselines.load_file(bad, "cpu")


def test_noise_floors_are_read_per_row_and_a_bad_file_names_its_line(tmp_path):
    csv_path = tmp_path / "quant.csv"
    shutil.copy(TINY / "quant.csv", csv_path)
    row = next(r for r in baselines.load_file(csv_path, "cpu") if r.spec == "rtn:8")
    path = baselines.noise_path(csv_path)
    path.write_text(
        "# noise\nmodel,dataset,spec,metric,spread,values\n"
        f"tiny-llama,{row.dataset},rtn:8,ppl,2e-06,1 2\n",
        encoding="utf-8",
    )
    assert baselines.NoiseFloors().of(row) == 2e-06
    assert baselines.NoiseFloors().of(dataclasses.replace(row, spec="rtn:2")) is None
    path.write_text("model,dataset,spec,metric,spread,values\nm,d,s,ppl,wide,1\n")
    with pytest.raises(BaselineError, match=r"quant.noise.txt:2: spread 'wide'"):
        baselines.NoiseFloors().of(row)


@pytest.mark.skipif(not (TINY / "quant.csv").is_file(), reason="tiny tier not recorded")
def test_measure_noise_writes_the_selected_points_and_resumes(tmp_path, tiny, monkeypatch):
    from mpt_core.measure import Session

    csv_path = tmp_path / "quant.csv"
    shutil.copy(TINY / "quant.csv", csv_path)
    session = Session(tiny, seqlen=64)
    calls = []
    real = session.measure_datasets
    monkeypatch.setattr(session, "measure_datasets", lambda *a: calls.append(a) or real(*a))

    def keep(row):
        return row.spec == "rtn:8" and row.dataset == "wikitext2"

    path = noise.measure_noise(session, csv_path, 4, keep)
    assert len(calls) == len(noise.PERTURBATIONS)
    lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    assert lines[1].startswith("tiny-llama,wikitext2,rtn:8,ppl,")
    assert len(lines) == 2
    noise.measure_noise(session, csv_path, 4, keep)
    assert len(calls) == len(noise.PERTURBATIONS)  # resumed: nothing measured again
