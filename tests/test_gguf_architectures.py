"""GGUF for each of the study's architectures, as tiny random models with real tokenizers.

LLaMA-2 (SentencePiece), LLaMA-3.x and the R1 Llama distill (byte-level BPE, ``llama3``
rope scaling), Qwen2/2.5 and the R1 Qwen distill (byte-level BPE, q/k/v biases), Gemma-3 1B
(SentencePiece, norms stored plus one) and Gemma-3 4B/12B/27B (the same text decoder nested
in ``Gemma3ForConditionalGeneration`` beside a SigLIP vision encoder, which the converter
leaves out) each go through llama.cpp's converter, are quantized by llama.cpp and read
back. The oracle is the model itself: an F32 file read back gives the same logits, F16 and
Q8_0 give the weights the file holds back within their rounding. Sizes are multiples of 32
(Q8_0's block); llama.cpp falls back from k-quants on rows that are not multiples of 256,
as on tiny-llama. A class the converter is not run for is refused from its config alone,
before any weight loads.
"""

from __future__ import annotations

import io

import gguf
import pytest
import torch

from conftest import TINY_SHAPE, tiny_gemma3_multimodal
from mpt_core.errors import SpecError
from mpt_core.pipeline import plan
from mpt_core.quant import gguf as gguf_method
from mpt_core.quant.gguf_convert import LAYOUTS, gguf_names, write_gguf
from mpt_core.spec import Spec

pytestmark = pytest.mark.skipif(
    gguf_method.quantizer_missing() is not None, reason=gguf_method.SETUP_HINT
)
F32, F16 = gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16
TEXT = [
    f"The quick brown fox jumps over the lazy dog {i} times, said Alice to Bob." for i in range(200)
]
SHAPE = TINY_SHAPE


def sentencepiece_folder(tmp_path):
    """A LLaMA-style SentencePiece model (BPE, byte fallback) trained on ``TEXT``."""
    sentencepiece = pytest.importorskip("sentencepiece")
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXT),
        model_writer=model,
        vocab_size=320,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    (tmp_path / "tokenizer.model").write_bytes(model.getvalue())
    return tmp_path


def byte_level_bpe():
    """A byte-level BPE (LLaMA-3 and Qwen2 style) trained on ``TEXT``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    core.train_from_iterator(TEXT, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>"
    )


def llama2(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer

    tokenizer = LlamaTokenizer.from_pretrained(str(sentencepiece_folder(tmp_path)))
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), **SHAPE)), tokenizer


def llama3(_tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = byte_level_bpe()
    rope = {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    }
    config = LlamaConfig(vocab_size=len(tokenizer), rope_parameters=rope, **SHAPE)
    return LlamaForCausalLM(config), tokenizer


def qwen2(_tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = byte_level_bpe()
    shape = {k: v for k, v in SHAPE.items() if k != "head_dim"}
    # padded past the tokenizer as Qwen2.5's is (151936 rows, 151665 tokens): llama.cpp's
    # converter loads it as a Qwen2 tokenizer, which adds Qwen's special tokens after ours
    config = Qwen2Config(vocab_size=len(tokenizer) + 32, tie_word_embeddings=True, **shape)
    return Qwen2ForCausalLM(config), tokenizer


def gemma3(tmp_path):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, GemmaTokenizer

    tokenizer = GemmaTokenizer.from_pretrained(str(sentencepiece_folder(tmp_path)))
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer), sliding_window=16, query_pre_attn_scalar=16, **SHAPE
    )
    return Gemma3ForCausalLM(config), tokenizer


def gemma3_multimodal(tmp_path):
    """Gemma-3 4B/12B/27B's class, with the Gemma-3 case's tokenizer."""
    from transformers import GemmaTokenizer

    tokenizer = GemmaTokenizer.from_pretrained(str(sentencepiece_folder(tmp_path)))
    return tiny_gemma3_multimodal(vocab_size=len(tokenizer)), tokenizer


BUILDERS = {
    "llama2": llama2,
    "llama3": llama3,
    "qwen2": qwen2,
    "gemma3": gemma3,
    "gemma3-multimodal": gemma3_multimodal,
}


@pytest.fixture(params=list(BUILDERS))
def study_model(request, tmp_path):
    torch.manual_seed(0)
    model, tokenizer = BUILDERS[request.param](tmp_path)
    with torch.no_grad():  # random norms, so that a norm read back wrong shows
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.uniform_(0.5, 1.5)
    return model.eval(), tokenizer


def logits_of(model) -> torch.Tensor:
    ids = torch.arange(3, 3 + 48).reshape(2, 24)
    with torch.no_grad():
        return model(ids, use_cache=False).logits


def scrambled(model):
    """A copy of ``model`` with every parameter overwritten: a read-back must set them all."""
    import copy

    twin = copy.deepcopy(model)
    with torch.no_grad():
        for param in twin.parameters():
            param.normal_()
    return twin


def test_every_study_architecture_is_covered():
    covered = {"LlamaForCausalLM", "Qwen2ForCausalLM", "Gemma3ForCausalLM"}
    assert set(LAYOUTS) == covered | {"Gemma3ForConditionalGeneration"}


def test_a_multimodal_gemma3_file_holds_its_text_decoder_only(tmp_path):
    """Every parameter but the vision encoder's and its projector's has a GGUF name; those
    two are what llama.cpp writes to a separate mmproj file."""
    model, _tokenizer = gemma3_multimodal(tmp_path)
    vision = ("model.vision_tower.", "model.multi_modal_projector.")
    text = {name for name, _ in model.named_parameters() if not name.startswith(vision)}
    assert set(gguf_names(model)) == text
    assert all(name.startswith("model.language_model.") for name in text)


def test_f32_round_trip_gives_the_same_logits(study_model, tmp_path):
    model, tokenizer = study_model
    path = write_gguf(model, tokenizer, tmp_path / "f32.gguf", F32)
    twin = scrambled(model)
    gguf_method.load_quantized(twin, path)
    torch.testing.assert_close(logits_of(twin), logits_of(model), atol=1e-5, rtol=0)


def test_f16_and_q8_0_read_back_within_their_rounding(study_model, tmp_path):
    model, tokenizer = study_model
    f16 = write_gguf(model, tokenizer, tmp_path / "f16.gguf", F16)
    llama_cpp = gguf_method.import_llama_cpp()
    q8_0 = gguf_method.quantize_file(llama_cpp, f16, tmp_path / "q8_0.gguf", "Q8_0", None)
    originals = dict(model.named_parameters())
    for path, relative in ((f16, 2**-10), (q8_0, 1 / 127)):
        twin = scrambled(model)
        gguf_method.load_quantized(twin, path)
        read_back = dict(twin.named_parameters())
        for name in gguf_names(model):  # what the file holds: all but a vision encoder
            param, original = read_back[name], originals[name]
            # F16: half an ulp of each value; Q8_0: half a step of its block's absmax / 127
            bound = relative * original.abs().max().item()
            assert (param - original).abs().max().item() <= bound, (path.name, name)


def test_q4_k_m_quantizes_and_reads_back(study_model, tmp_path):
    model, tokenizer = study_model
    f16 = write_gguf(model, tokenizer, tmp_path / "f16.gguf", F16)
    llama_cpp = gguf_method.import_llama_cpp()
    path = gguf_method.quantize_file(llama_cpp, f16, tmp_path / "q4.gguf", "Q4_K_M", None)
    types = gguf_method.mixture(path)
    assert set(types) - {"F32", "F16"}, f"nothing quantized: {types}"
    twin = scrambled(model)
    gguf_method.load_quantized(twin, path)
    originals, read_back = dict(model.named_parameters()), dict(twin.named_parameters())
    for name in gguf_names(model):
        original = originals[name]
        error = (read_back[name] - original).abs().max().item()
        assert error <= 0.25 * original.abs().max().item(), name


def test_unsupported_architecture_is_refused_before_loading(tmp_path, monkeypatch):
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=32, n_head=2, architectures=["GPT2LMHeadModel"]).save_pretrained(
        tmp_path
    )
    import mpt_core.models

    def no_loading(*_args, **_kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(mpt_core.models, "load_model", no_loading)
    with pytest.raises(SpecError) as error:
        plan(Spec.parse("gguf:Q8_0")).check_model(str(tmp_path))
    message = str(error.value)
    assert "\n" not in message
    assert "GPT2LMHeadModel" in message and "LlamaForCausalLM" in message
    plan(Spec.parse("rtn:4")).check_model(str(tmp_path))  # other methods take any class


def test_mpt_run_refuses_it_in_one_line(tmp_path, capsys):
    from transformers import OPTConfig

    from mpt_core.cli import main

    OPTConfig(
        num_hidden_layers=1, hidden_size=32, architectures=["OPTForCausalLM"]
    ).save_pretrained(tmp_path)  # a config only: loading it would fail on the missing weights
    status = main(["run", "--model", str(tmp_path), "--spec", "gguf:Q4_K_M", "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert status != 0 and "OPTForCausalLM" in err and len(err.splitlines()) == 1, err


def test_both_aliases_are_llama():
    from mpt_core.models import architecture, load_model

    for alias in ("tiny-llama",):  # smollm2-135m: tests/test_gguf.py's slow round trip
        assert type(load_model(alias, device="cpu").model).__name__ == architecture(alias)


def test_a_multimodal_gemma3s_importance_matrix_covers_its_text_linears(tmp_path):
    model, _tokenizer = gemma3_multimodal(tmp_path)
    windows = torch.randint(3, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    imatrix = gguf_method.importance_matrix(model, windows)
    linears = [name for name in gguf_names(model) if ".mlp." in name or "_proj." in name]
    assert sorted(imatrix) == sorted(gguf_names(model)[name] for name in linears)
    assert all(name.startswith("blk.") for name in imatrix)
