"""Gemma-3 4B/12B/27B (``Gemma3ForConditionalGeneration``): a Gemma-3 text decoder nested
at ``model.language_model`` beside a SigLIP vision encoder. mpt evaluates text only: the
engine finds the text decoder's blocks and stem, its sites name the nested parameters, the
footprint counts them, the context is the text config's, and a method that spells the
LLaMA layout is refused rather than measured wrong. (GGUF: tests/test_gguf_architectures.py;
streamed evaluation: tests/test_memory.py.)"""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_gemma3_multimodal
from mpt_core.engine.layerwise import (
    block_linear_names,
    compress_layerwise,
    decoder_layers,
    stem_modules,
)

pytestmark = pytest.mark.usefixtures("one_thread")


class NoStats:
    def add_batch(self, _inp, _out) -> None:
        pass


@pytest.fixture
def windows():
    return torch.randint(2, 258, (11, 32), generator=torch.Generator().manual_seed(0))


def test_the_engine_finds_a_multimodal_gemma3s_text_blocks_and_stem():
    """Gemma-3 4B/12B/27B nest their text decoder beside a vision encoder; the blocks and the
    stem are the text decoder's, and the vision encoder is in neither (text-only input)."""
    torch.manual_seed(0)
    model = tiny_gemma3_multimodal()
    text = model.model.language_model
    assert decoder_layers(model) is text.layers
    stem = stem_modules(model)
    assert stem == [text.embed_tokens, text.rotary_emb, text.norm, model.lm_head]
    vision = {id(module) for module in model.model.vision_tower.modules()}
    assert not any(id(module) in vision for module in stem)


def test_sites_name_a_multimodal_gemma3s_text_weights(windows):
    """Gemma-3 4B/12B/27B keep their blocks under ``model.language_model.layers``: the sites
    the engine makes, and so the storage a method returns, name those parameters."""
    from mpt_core.storage import TensorStorage

    torch.manual_seed(0)
    model = tiny_gemma3_multimodal()
    parameters = dict(model.named_parameters())

    def compress(site, linear, _stats):
        assert linear is model.get_submodule(site.path)
        return TensorStorage()

    storage = compress_layerwise(model, windows, lambda _site, _linear: NoStats(), compress)
    assert sorted(storage) == sorted(block_linear_names(model))
    assert storage and all(name in parameters for name in storage)
    assert all(name.startswith("model.language_model.layers.") for name in storage)


def test_a_multimodal_gemma3s_footprint_counts_its_compressed_text_weights():
    from mpt_core.pipeline import compress
    from mpt_core.spec import Spec

    torch.manual_seed(0)
    model = tiny_gemma3_multimodal()
    footprint = compress(model, Spec.parse("magnitude:0.5"), None)
    linears = sum(model.get_parameter(name).numel() for name in block_linear_names(model))
    assert footprint.compressed_numel == linears
    assert footprint.sparsity == pytest.approx(0.5)
    # the size is the language model's alone, as the study's Table 6 sizes are
    text = {
        param.data_ptr(): param.numel()
        for name, param in model.named_parameters()
        if "vision_tower" not in name and "multi_modal_projector" not in name
    }
    assert footprint.fp16_bytes == 2 * sum(text.values())


def test_storage_naming_tensors_the_model_lacks_is_refused_in_one_line(tiny):
    """A method that spells the blocks as ``model.layers`` in a model that nests them would
    otherwise get a footprint that silently counts nothing."""
    from mpt_core.errors import ModelError
    from mpt_core.pipeline import check_names
    from mpt_core.spec import Spec

    stage = Spec.parse("magnitude:0.5").stages[0]
    check_names(tiny.model, stage, dict.fromkeys(block_linear_names(tiny.model)))
    wrong = {"model.language_model.layers.0.mlp.up_proj.weight": None}
    with pytest.raises(ModelError) as error:
        check_names(tiny.model, stage, wrong)
    message = str(error.value)
    assert "\n" not in message and "magnitude:0.5" in message and "LlamaForCausalLM" in message
    assert "model.language_model.layers.0.mlp.up_proj.weight" in message


def test_a_multimodal_gemma3s_context_is_its_text_configs():
    from types import SimpleNamespace

    from mpt_core.commands.common import check_context
    from mpt_core.errors import MptError

    loaded = SimpleNamespace(model=tiny_gemma3_multimodal(), name="gemma3-4b-it")
    args = SimpleNamespace(seqlen=512, allow_long_context=False)
    with pytest.raises(MptError, match="context of 256"):
        check_context(args, loaded)
