"""Session.measure_datasets: one compression, every dataset measured as measure() would."""

from __future__ import annotations

import pytest

from conftest import needs_data
from mpt_core import measure
from mpt_core.measure import Session
from mpt_core.spec import Spec


def test_measure_datasets_compresses_once_and_matches_single_measurements(fresh_tiny, monkeypatch):
    session = Session(fresh_tiny, seqlen=64)
    spec = Spec.parse("magnitude:0.5")
    single = [session.measure(spec, dataset, 3).value for dataset in ("wikitext2", "ptb")]
    calls = []
    real_apply = measure.apply_stages
    monkeypatch.setattr(
        measure, "apply_stages", lambda *args: calls.append(args) or real_apply(*args)
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
            stages_run.extend(str(planned.stage) for planned in stages)
            or real_apply(model, stages, *rest)
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


def test_a_spec_is_validated_and_resolved_once_per_measurement(tiny, monkeypatch):
    """Parse -> resolve (one Plan) -> compress -> record: the registry is asked once per
    stage for a measurement on two datasets, not again by compression or by the records."""
    from collections import Counter

    from mpt_core import registry

    calls = Counter()
    real_resolve, real_get, real_settings = registry.resolve, registry.get, registry.Method.settings

    def counting(name, real):
        return lambda *args: calls.update([name]) or real(*args)

    monkeypatch.setattr(registry, "resolve", counting("resolve", real_resolve))
    monkeypatch.setattr(registry, "get", counting("get", real_get))
    monkeypatch.setattr(registry.Method, "settings", counting("settings", real_settings))
    records = Session(tiny, seqlen=64).measure_datasets(
        Spec.parse("magnitude:0.5+rtn:4[group=16]"), ["wikitext2", "ptb"], 2
    )
    assert calls == {"resolve": 2, "get": 2, "settings": 2}
    assert [stage["stage"] for stage in records[0].settings] == ["magnitude:0.5", "rtn:4[group=16]"]


@needs_data
def test_the_key_a_sweep_resumes_by_is_the_key_of_the_record_it_makes(tiny):
    """``mpt sweep`` skips a point when ``Session.point_key`` is in its ``--out``: that
    must be the key of the record the measurement would append, every field of it."""
    session = Session(tiny, seqlen=64)
    record = session.measure(Spec.parse("magnitude:0.5"), "ptb", 2)
    assert session.point_key("magnitude:0.5", "ptb", 2) == record.key
    assert session.setup == record.key.setup
    assert (record.key.dtype, record.key.device) == ("float32", "cpu")
