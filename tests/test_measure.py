"""Session.measure_datasets: one compression, every dataset measured as measure() would."""

from __future__ import annotations

import pytest

from mpt_core import measure
from mpt_core.measure import Session
from mpt_core.spec import Spec


def test_measure_datasets_compresses_once_and_matches_single_measurements(fresh_tiny, monkeypatch):
    session = Session(fresh_tiny, seqlen=64)
    spec = Spec.parse("magnitude:0.5")
    single = [session.measure(spec, dataset, 3).value for dataset in ("wikitext2", "ptb")]
    calls = []
    real_compress = measure.compress
    monkeypatch.setattr(
        measure, "compress", lambda *args: calls.append(args) or real_compress(*args)
    )
    both = session.measure_datasets(spec, ["wikitext2", "ptb"], 3)
    assert len(calls) == 1
    assert [record.dataset for record in both] == ["wikitext2", "ptb"]
    assert [record.value for record in both] == single
    assert both[0].seconds["compress"] == both[1].seconds["compress"]


def test_measure_datasets_restores_the_model(fresh_tiny):
    session = Session(fresh_tiny, seqlen=64)
    dense = session.measure(Spec.parse("dense"), "wikitext2", 3).value
    session.measure_datasets(Spec.parse("magnitude:0.7"), ["wikitext2", "ptb"], 3)
    assert session.measure(Spec.parse("dense"), "wikitext2", 3).value == dense


@pytest.mark.parametrize("first", ["magnitude:0.5", "svd:0.3"])
def test_pipelines_sharing_a_first_stage_run_it_once_and_measure_the_same(
    fresh_tiny, tiny, first, monkeypatch
):
    specs = [Spec.parse(f"{first}+rtn:{bits}") for bits in (8, 4, 3)]
    alone = [Session(tiny, seqlen=64).measure(spec, "wikitext2", 3) for spec in specs]
    stages_run = []
    real_apply = measure.apply_stages
    monkeypatch.setattr(
        measure,
        "apply_stages",
        lambda model, stages, *rest: (
            stages_run.extend(map(str, stages)) or real_apply(model, stages, *rest)
        ),
    )
    session = Session(fresh_tiny, seqlen=64)
    shared = [session.measure(spec, "wikitext2", 3) for spec in specs]
    assert stages_run.count(first) == 1
    for one, other in zip(alone, shared, strict=True):
        assert one.value == other.value
        assert one.footprint == other.footprint
    assert session.measure(Spec.parse("dense"), "wikitext2", 3).value == pytest.approx(
        Session(tiny, seqlen=64).measure(Spec.parse("dense"), "wikitext2", 3).value, abs=0
    )
