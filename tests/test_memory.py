"""Bounded memory on a GPU, proven on the CPU: the restore snapshot lives in host memory, one
model is resident per process, and an offloaded model has at most one block on the compute
device at any moment, with the same numbers as without offload."""

from __future__ import annotations

import gc
import itertools
import weakref
from types import SimpleNamespace

import pytest
import torch

from conftest import tiny_gemma3_multimodal
from mpt_core import snapshot as snapshot_module
from mpt_core.engine import offload as offload_module
from mpt_core.engine.layerwise import decoder_layers
from mpt_core.evaluate.perplexity import perplexity
from mpt_core.harness.state import MptState
from mpt_core.models import (
    compute_device,
    fits,
    is_offloaded,
    load_model,
    model_bytes,
    offload,
    place,
    state_dict_hash,
    tiny_llama,
)
from mpt_core.pipeline import compress
from mpt_core.snapshot import Snapshot
from mpt_core.spec import Spec

pytestmark = pytest.mark.usefixtures("one_thread")

# Methods on the layerwise engine (calibrated, each propagation) and its loop without data.
ENGINE_SPECS = ("sparsegpt:0.5", "wanda:0.5", "gptq:4", "awq:4", "svd_llm:0.6", "rtn:4")


def test_the_snapshot_lives_in_host_memory_not_on_the_model_device(monkeypatch):
    """With the host made a device of its own (meta), every snapshot tensor is there: none
    is a second copy on the device the model computes on."""
    model, _ = tiny_llama()
    monkeypatch.setattr(snapshot_module, "HOST", torch.device("meta"))
    held = Snapshot(model).tensors()
    assert held and {tensor.device.type for tensor in held} == {"meta"}


def test_the_snapshot_restores_the_exact_weights_after_a_structural_change(fixed_calibration):
    model, _ = tiny_llama()
    original, snapshot = state_dict_hash(model), Snapshot(model)
    compress(model, Spec.parse("shortgpt:0.5"), fixed_calibration(4, 16))
    assert len(decoder_layers(model)) == 1
    snapshot.restore(model)
    assert len(decoder_layers(model)) == 2 and state_dict_hash(model) == original


@pytest.fixture
def saved_tiny(tmp_path):
    """tiny-llama saved as a local checkpoint: a second model name to load."""
    model, tokenizer = tiny_llama(seed=1)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    return str(tmp_path)


def _state(**options) -> MptState:
    values = {"--mpt-device-map": None, **options}
    return MptState(SimpleNamespace(getoption=values.get))


def test_loading_a_second_model_frees_the_first(saved_tiny):
    state = _state()
    first = weakref.ref(state.session_for("tiny-llama", 64).loaded.model)
    state.session_for(saved_tiny, 64)
    gc.collect()
    assert first() is None, "the first model is still referenced after the second loaded"


def test_one_model_at_two_seqlens_is_loaded_and_snapshotted_once(monkeypatch):
    loads = []
    monkeypatch.setattr(
        "mpt_core.models.load_model", lambda name, **kw: loads.append(name) or load_model(name)
    )
    state = _state()
    short, long = state.session_for("tiny-llama", 32), state.session_for("tiny-llama", 64)
    assert loads == ["tiny-llama"]
    assert short.loaded is long.loaded and short.snapshot is long.snapshot


def test_a_model_that_does_not_fit_the_gpu_is_offloaded_not_moved(monkeypatch):
    model, _ = tiny_llama()
    free = model_bytes(model)  # the model alone would fill it: no room for the work
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, 2 * free))
    place(model, torch.device("cuda"))
    assert is_offloaded(model) and compute_device(model) == torch.device("cuda")
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert fits(free // 2, free) and not fits(free, free)


class Residency:
    """Stands in for host<->device moves on a CPU-only machine: each move copies the block's
    tensors (so a method that kept a stale tensor across a move loses its writes, as on a
    GPU) and records where the block is; a hook on each of a block's linears counts the
    blocks on the device whenever the block computes."""

    def __init__(self, model, monkeypatch):
        self.blocks = list(decoder_layers(model))
        self.where = {id(block): "host" for block in self.blocks}
        self.most_on_device = 0
        monkeypatch.setattr(offload_module, "to_compute", self._mover("device"))
        monkeypatch.setattr(offload_module, "to_host", self._mover("host"))
        for block in self.blocks:
            for linear in block.modules():
                if isinstance(linear, torch.nn.Linear):
                    linear.register_forward_pre_hook(self._checker(block))

    def _mover(self, where: str):
        def move(module, _device):
            for tensor in itertools.chain(module.parameters(), module.buffers()):
                tensor.data = tensor.data.clone()
            if id(module) in self.where:
                self.where[id(module)] = where

        return move

    def _checker(self, block):
        def check(_linear, _args):
            assert self.where[id(block)] == "device", "a block computed in host memory"
            self.most_on_device = max(self.most_on_device, self.on_device_now)

        return check

    @property
    def on_device_now(self) -> int:
        return sum(where == "device" for where in self.where.values())


def _compressed_hash(spec: str, calibration, offloaded: bool, monkeypatch) -> tuple[str, int]:
    model, _ = tiny_llama()
    residency = None
    if offloaded:
        offload(model, "cpu")
        residency = Residency(model, monkeypatch)
    compress(model, Spec.parse(spec), calibration)
    if residency is not None:
        assert residency.on_device_now == 0, "a block stayed on the device after compression"
        return state_dict_hash(model), residency.most_on_device
    return state_dict_hash(model), 0


@pytest.mark.parametrize("spec", ENGINE_SPECS)
def test_block_offload_keeps_one_block_on_the_device_and_changes_no_weight(
    spec, fixed_calibration, monkeypatch
):
    calibration = fixed_calibration(4, 16)
    dense, _ = _compressed_hash(spec, calibration, False, monkeypatch)
    streamed, most = _compressed_hash(spec, calibration, True, monkeypatch)
    assert streamed == dense
    assert most <= 1


def _seeded_gemma3_multimodal():
    torch.manual_seed(0)
    return tiny_gemma3_multimodal()


@pytest.mark.parametrize(
    ("build", "vocab"),
    [(lambda: tiny_llama()[0], 258), (_seeded_gemma3_multimodal, 300)],
    ids=["llama", "multimodal-gemma3"],
)
def test_an_offloaded_model_evaluates_block_by_block_to_the_same_perplexity(
    monkeypatch, build, vocab
):
    model = build()
    ids = torch.randint(2, vocab, (1, 4 * 32), generator=torch.Generator().manual_seed(0))
    resident = perplexity(model, ids, 32)
    offload(model, "cpu")
    residency = Residency(model, monkeypatch)
    streamed = perplexity(model, ids, 32)
    assert streamed.window_losses == resident.window_losses
    assert residency.most_on_device == 1 and residency.on_device_now == 0
