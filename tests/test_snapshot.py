"""Snapshot/restore: every method's changes undone bit for bit, in the model object itself."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mpt_core import registry
from mpt_core.errors import MptError
from mpt_core.models import state_dict_hash
from mpt_core.pipeline import Calibration, compress
from mpt_core.snapshot import Snapshot
from mpt_core.spec import Spec

pytestmark = pytest.mark.usefixtures("one_thread")

# An example level per level kind; scheme levels need a scheme the method knows.
LEVEL_EXAMPLES = {"ratio": "0.5", "nm": "2:4", "bits": "4"}
SCHEME_EXAMPLES = {"gguf": "Q8_0"}
# LoRAPrune never prunes the last block: on the 2-block tiny model 28% of the parameters
# are within its reach
RATIO_EXAMPLES = {"loraprune": "0.2"}
CALIB_SEQLEN = 16


def example_specs() -> list[str]:
    """One valid spec per (registered method, level kind it takes)."""
    specs = []
    for name in registry.names():
        method = registry.get(name)
        options = "[nsamples=2]" if "nsamples" in method.options else ""
        for kind in sorted(method.levels):
            if kind == "none":
                specs.append(f"{name}{options}")
            elif kind == "scheme":
                specs.append(f"{name}:{SCHEME_EXAMPLES.get(name, 'Q8_0')}{options}")
            elif kind == "ratio":
                specs.append(f"{name}:{RATIO_EXAMPLES.get(name, LEVEL_EXAMPLES[kind])}{options}")
            else:
                specs.append(f"{name}:{LEVEL_EXAMPLES[kind]}{options}")
    return specs


def logits_of(model) -> torch.Tensor:
    ids = torch.arange(2, 2 + 24).reshape(2, 12)
    with torch.no_grad():
        return model(ids, use_cache=False).logits.clone()


def test_every_registered_method_is_covered():
    specs = example_specs()
    assert {"magnitude", "rtn"} <= set(registry.names())
    assert {Spec.parse(s).stages[0].method for s in specs} == set(registry.names())
    for text in specs:
        registry.validate(Spec.parse(text))


@pytest.fixture(scope="module")
def calibration(tiny):
    """Calibration windows shared by every method (tiny-llama's tokenizer is deterministic)."""
    return Calibration(tiny.tokenizer, CALIB_SEQLEN)


def architecture(model) -> list[tuple]:
    return [(name, type(module)) for name, module in model.named_modules()] + [
        (name, tuple(t.shape), t.dtype) for name, t in model.state_dict().items()
    ]


@pytest.mark.parametrize("text", example_specs())
def test_restore_undoes_every_method_exactly(fresh_tiny, calibration, text):
    model = fresh_tiny.model
    original_hash, original_logits = state_dict_hash(model), logits_of(model)
    original_architecture = architecture(model)
    modules_before = dict(model.named_modules())
    snapshot = Snapshot(model)

    try:
        compress(model, Spec.parse(text), calibration)
    except MptError as error:
        message = str(error).lower()
        if any(word in message for word in ("cuda", "gpu", "install")):
            pytest.skip(f"{text} cannot run here: {error}")
        raise
    assert state_dict_hash(model) != original_hash, f"{text} changed nothing"
    same_architecture = architecture(model) == original_architecture

    snapshot.restore(model)
    assert state_dict_hash(model) == original_hash
    assert architecture(model) == original_architecture
    assert torch.equal(logits_of(model), original_logits)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    if same_architecture and not any(m._forward_hooks for m in modules_before.values()):
        # weights changed in place are restored into the very same modules
        for name, module in model.named_modules():
            assert module is modules_before[name], name


def test_in_place_restore_keeps_modules_and_parameter_storage(fresh_tiny):
    model = fresh_tiny.model
    original = state_dict_hash(model)
    snapshot = Snapshot(model)
    q_proj = model.model.layers[0].self_attn.q_proj
    pointers = {name: p.data_ptr() for name, p in model.named_parameters()}
    compress(model, Spec.parse("magnitude:0.7+rtn:3[group=32]"), None)
    snapshot.restore(model)
    assert state_dict_hash(model) == original
    assert model.model.layers[0].self_attn.q_proj is q_proj
    assert {name: p.data_ptr() for name, p in model.named_parameters()} == pointers


def structural_changes():
    def delete_layer(model):
        del model.model.layers[1]

    def replace_linear(model):
        model.model.layers[0].mlp.down_proj = nn.Linear(128, 64, bias=True)

    def replace_linear_same_shape(model):
        model.model.layers[1].self_attn.o_proj = nn.Linear(64, 64, bias=False)

    def slice_matrix(model):
        mlp = model.model.layers[0].mlp
        mlp.up_proj.weight = nn.Parameter(mlp.up_proj.weight[:96].clone())
        mlp.gate_proj.weight = nn.Parameter(mlp.gate_proj.weight[:96].clone())
        mlp.down_proj.weight = nn.Parameter(mlp.down_proj.weight[:, :96].clone())
        mlp.up_proj.out_features = mlp.gate_proj.out_features = 96
        mlp.down_proj.in_features = 96

    def wrap_module(model):
        model.model.layers[0].mlp = nn.Sequential(model.model.layers[0].mlp, nn.Identity())

    def change_dtype(model):
        model.lm_head.to(torch.float16)

    def add_hook(model):
        model.model.layers[0].register_forward_hook(lambda _m, _a, out: out)

    def change_config(model):
        model.config.num_hidden_layers = 1
        del model.model.layers[1]

    return [
        delete_layer,
        replace_linear,
        replace_linear_same_shape,
        slice_matrix,
        wrap_module,
        change_dtype,
        add_hook,
        change_config,
    ]


@pytest.mark.parametrize("change", structural_changes(), ids=lambda f: f.__name__)
def test_structural_change_is_restored_exactly_in_place(fresh_tiny, change):
    model = fresh_tiny.model
    original_hash, original_logits = state_dict_hash(model), logits_of(model)
    original_config = model.config.to_json_string()
    original_names = [name for name, _ in model.named_modules()]
    holder = fresh_tiny  # someone else holding the same model object
    snapshot = Snapshot(model)

    change(model)
    snapshot.restore(model)

    assert holder.model is model
    assert state_dict_hash(model) == original_hash
    assert [name for name, _ in model.named_modules()] == original_names
    assert model.config.to_json_string() == original_config
    assert len(model.model.layers) == 2
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert torch.equal(logits_of(model), original_logits)

    # the restored model does not share tensors with the snapshot: changing it again
    # and restoring again still gives the original
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
    snapshot.restore(model)
    assert state_dict_hash(model) == original_hash


def test_restore_after_an_exception_mid_compression(fresh_tiny):
    """A method that fails part way (here: N:M with M not dividing the width) has already
    changed some weights; restore still brings back the original."""
    model = fresh_tiny.model
    original = state_dict_hash(model)
    snapshot = Snapshot(model)
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.weight.zero_()
    with pytest.raises(MptError):
        compress(model, Spec.parse("magnitude:2:3"), None)
    snapshot.restore(model)
    assert state_dict_hash(model) == original


def test_state_dict_hash_sees_every_change(fresh_tiny):
    model = fresh_tiny.model
    original = state_dict_hash(model)
    assert state_dict_hash(model) == original
    assert fresh_tiny.weights_hash == original
    with torch.no_grad():
        weight = model.model.layers[1].mlp.up_proj.weight
        old = weight[3, 5].item()
        weight[3, 5] = torch.nextafter(torch.tensor(old), torch.tensor(1.0))
        assert state_dict_hash(model) != original
        weight[3, 5] = old
    assert state_dict_hash(model) == original
