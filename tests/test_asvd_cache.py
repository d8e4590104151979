"""ASVD's dense statistics on disk (``engine.stats_cache``): one search per (weights,
calibration, α) in a session, none in the next session, a miss for anything the key holds,
and an unreadable file recomputed with a warning."""

from __future__ import annotations

import pytest
import torch

from mpt_core.engine import stats_cache
from mpt_core.engine.layerwise import decoder_layers
from mpt_core.lowrank import asvd as asvd_module
from mpt_core.models import state_dict_hash
from mpt_core.pipeline import compress
from mpt_core.snapshot import Snapshot
from mpt_core.spec import Spec

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def searches(monkeypatch, tmp_path):
    """The sensitivity searches run, counted, with the disk cache on under ``tmp_path``."""
    monkeypatch.setenv("MPT_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("MPT_STATS_CACHE", "1")
    calls = []
    real = asvd_module.sensitivity
    monkeypatch.setattr(asvd_module, "sensitivity", lambda *a: calls.append(1) or real(*a))
    asvd_module._STATISTICS.clear()
    yield calls
    asvd_module._STATISTICS.clear()


def compressed_hash(model, snapshot, spec, calibration) -> str:
    """state_dict_hash of the restored dense ``model`` compressed by ``spec``."""
    snapshot.restore(model)
    compress(model, Spec.parse(spec), calibration)
    return state_dict_hash(model)


def new_session() -> None:
    """What another process starts with: no statistics in memory."""
    asvd_module._STATISTICS.clear()


def stored_files(tmp_path) -> list:
    return sorted((tmp_path / "stats").glob("asvd-*.pt"))


def test_a_session_searches_once_and_the_next_reads_the_disk(
    fresh_tiny, fixed_calibration, searches, tmp_path
):
    model, calibration = fresh_tiny.model, fixed_calibration(nsamples=4)
    snapshot = Snapshot(model)
    compressed_hash(model, snapshot, "asvd:0.2[nsamples=4]", calibration)
    first = compressed_hash(model, snapshot, "asvd:0.3[nsamples=4]", calibration)
    assert len(searches) == 1 and len(stored_files(tmp_path)) == 1
    new_session()
    assert compressed_hash(model, snapshot, "asvd:0.3[nsamples=4]", calibration) == first
    assert len(searches) == 1


def test_other_calibration_or_weights_miss_the_disk(
    fresh_tiny, fixed_calibration, searches, tmp_path
):
    model, snapshot = fresh_tiny.model, Snapshot(fresh_tiny.model)
    compressed_hash(model, snapshot, "asvd:0.2[nsamples=4]", fixed_calibration(nsamples=4))
    new_session()
    other = fixed_calibration(nsamples=4, seed=1)
    compressed_hash(model, snapshot, "asvd:0.2[nsamples=4]", other)
    assert len(searches) == 2
    new_session()
    snapshot.restore(model)
    with torch.no_grad():
        decoder_layers(model)[1].post_attention_layernorm.weight.mul_(0.5)  # not a linear
    compress(model, Spec.parse("asvd:0.2[nsamples=4]"), other)
    assert len(searches) == 3 and len(stored_files(tmp_path)) == 3


def test_the_key_holds_the_windows_shape_and_alpha(tiny, fixed_calibration):
    windows = fixed_calibration(nsamples=4).windows({})
    key = asvd_module.statistics_key(tiny.model, windows, 0.5)
    assert asvd_module.statistics_key(tiny.model, windows.reshape(8, -1), 0.5) != key
    assert asvd_module.statistics_key(tiny.model, windows, 0.25) != key
    assert asvd_module.statistics_key(tiny.model, windows.clone(), 0.5) == key


def test_an_unreadable_file_is_recomputed_and_overwritten(
    fresh_tiny, fixed_calibration, searches, tmp_path
):
    model, calibration = fresh_tiny.model, fixed_calibration(nsamples=4)
    snapshot = Snapshot(model)
    first = compressed_hash(model, snapshot, "asvd:0.2[nsamples=4]", calibration)
    (stored,) = stored_files(tmp_path)
    stored.write_bytes(stored.read_bytes()[:100])
    new_session()
    with pytest.warns(UserWarning, match="unreadable statistics cache"):
        assert compressed_hash(model, snapshot, "asvd:0.2[nsamples=4]", calibration) == first
    assert len(searches) == 2
    new_session()
    assert compressed_hash(model, snapshot, "asvd:0.2[nsamples=4]", calibration) == first
    assert len(searches) == 2


def test_a_file_of_another_model_is_a_miss(tiny, tmp_path, monkeypatch):
    """Statistics that do not cover the model's block linears are not used."""
    monkeypatch.setenv("MPT_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("MPT_STATS_CACHE", "1")
    stats_cache.store("asvd", "k", {"scales": [], "pairs": []})
    with pytest.warns(UserWarning, match="do not cover"):
        assert stats_cache.load("asvd", "k", lambda v: asvd_module.decoded(v, tiny.model)) is None


def test_the_switch_keeps_the_disk_untouched(
    fresh_tiny, fixed_calibration, searches, tmp_path, monkeypatch
):
    """``MPT_STATS_CACHE=0``: nothing written, and a new session searches again."""
    monkeypatch.setenv("MPT_STATS_CACHE", "0")
    model, calibration = fresh_tiny.model, fixed_calibration(nsamples=4)
    snapshot = Snapshot(model)
    compressed_hash(model, snapshot, "asvd:0.2[nsamples=4]", calibration)
    new_session()
    compressed_hash(model, snapshot, "asvd:0.2[nsamples=4]", calibration)
    assert len(searches) == 2 and not (tmp_path / "stats").exists()


def test_an_unwritable_cache_folder_only_warns(tmp_path, monkeypatch):
    monkeypatch.setenv("MPT_CACHE_DIR", str(tmp_path / "a-file"))
    monkeypatch.setenv("MPT_STATS_CACHE", "1")
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.warns(UserWarning, match="not written"):
        stats_cache.store("asvd", "k", {"pairs": []})
    assert list(tmp_path.iterdir()) == [tmp_path / "a-file"]
