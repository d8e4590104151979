"""An offline machine: a hub id fails at once with the nearest known name, and loading
asks the hub client for the local cache only (no retries against an unreachable hub)."""

from __future__ import annotations

import pytest

from mpt_core import hub, models
from mpt_core.errors import ModelError


@pytest.fixture
def probe(monkeypatch):
    """hub.reachable asked afresh under the test's environment, and forgotten after."""
    hub.reachable.cache_clear()
    yield monkeypatch
    hub.reachable.cache_clear()


def test_hf_hub_offline_means_unreachable_without_a_probe(probe):
    probe.setenv("HF_HUB_OFFLINE", "1")
    probe.setattr(hub.socket, "create_connection", pytest.fail)
    assert not hub.reachable()
    assert hub.loading_kwargs() == {"local_files_only": True}


def test_an_endpoint_that_does_not_answer_is_unreachable(probe):
    probe.delenv("HF_HUB_OFFLINE", raising=False)
    probe.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    assert not hub.reachable()


def test_an_endpoint_that_answers_is_reachable(probe):
    probe.delenv("HF_HUB_OFFLINE", raising=False)
    probe.setattr(hub.socket, "create_connection", lambda *_args, **_kw: _Closed())
    assert hub.reachable()
    assert hub.loading_kwargs() == {}


class _Closed:
    def close(self) -> None:
        pass


def test_a_hub_id_offline_reads_the_cache_only_and_names_the_nearest_alias(probe):
    probe.setenv("HF_HUB_OFFLINE", "1")
    asked = {}

    def from_pretrained(source, dtype, **kwargs):
        asked.update(kwargs)
        raise OSError("not in the cache")

    probe.setattr(models, "_from_pretrained", from_pretrained)
    with pytest.raises(ModelError) as error:
        models._from_hub("smollm2", None)
    assert asked == {"local_files_only": True}
    assert str(error.value) == (
        "model 'smollm2': the hub is unreachable and its local cache has no 'smollm2'; "
        "did you mean smollm2-135m?"
    )


def test_the_hint_names_nothing_when_no_known_name_is_close():
    assert hub.unreachable_hint("org/unrelated", ["tiny-llama"]).endswith("no 'org/unrelated'")
