"""Write an in-memory LLaMA-family model to a GGUF file, as llama.cpp's converter does.

No pip package ships llama.cpp's ``convert_hf_to_gguf.py``; the ``gguf`` package has
the writer, the tensor-name map and the metadata keys, which is all a LLaMA model
needs. What this module reproduces of ``convert_hf_to_gguf.py`` (``LlamaModel``):

- the ``llama.*`` hyper-parameters and ``general.file_type``;
- tensor names from ``gguf.TensorNameMap``; 1-D tensors (norms) stay F32 and
  matrices take the requested type (F16 or F32), as ``--outtype f16|f32`` does;
- ``attn_q``/``attn_k`` rows permuted from the HF rotary layout (two halves) to
  llama.cpp's interleaved pairs (``LlamaModel.permute``); ``unpermute`` undoes it;
- a tied LM head is not written (llama.cpp then reads ``token_embd``);
- the byte-level BPE vocabulary (``tokenizer.ggml.model = gpt2``): tokens, merges,
  token types (added special tokens are CONTROL) and the special ids. That covers
  SmolLM2's tokenizer and mpt's byte-level tiny-llama tokenizer.

``gguf_names`` gives the GGUF name of each parameter, so a quantized file can be
read back into the same model. The conversion keeps its own loop over the model's
parameters: it writes every tensor (embeddings, norms, head), not only the block linears.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import torch
from torch import nn

from mpt_core.errors import ModelError

ARCH = gguf.MODEL_ARCH.LLAMA
FILE_TYPES = {
    gguf.GGMLQuantizationType.F32: gguf.LlamaFileType.ALL_F32,
    gguf.GGMLQuantizationType.F16: gguf.LlamaFileType.MOSTLY_F16,
}


def write_gguf(
    model: nn.Module, tokenizer, path: str | Path, dtype: gguf.GGMLQuantizationType
) -> Path:
    """Write ``model`` (a ``LlamaForCausalLM``) and its tokenizer to ``path`` as GGUF."""
    if dtype not in FILE_TYPES:
        raise ValueError(f"GGUF output type must be F32 or F16, not {dtype.name}")
    check_llama(model)
    path = Path(path)
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[ARCH])
    _add_hyperparameters(writer, model.config, FILE_TYPES[dtype])
    _add_vocab(writer, tokenizer, model.config.vocab_size)
    names = gguf_names(model)
    for name, param in _unique_parameters(model):
        data = param.detach().float().cpu()
        heads = rotary_heads(model.config, name)
        if heads:
            data = permute(data, heads)
        array = data.numpy()
        if array.ndim > 1 and dtype == gguf.GGMLQuantizationType.F16:
            array = array.astype(np.float16)
        writer.add_tensor(names[name], array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def check_llama(model: nn.Module) -> None:
    """Refuse what this converter does not reproduce, instead of writing a wrong file."""
    config = model.config
    problems = []
    if config.model_type != "llama":
        problems.append(f"model_type {config.model_type!r} (only 'llama')")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        problems.append("biases in attention or MLP")
    if _rope(config).get("rope_type", "default") != "default":
        problems.append(f"rope scaling {_rope(config)['rope_type']!r}")
    if problems:
        raise ModelError(f"the GGUF converter handles plain LLaMA models; this has {problems}")


def gguf_names(model: nn.Module) -> dict[str, str]:
    """GGUF tensor name of every (untied) parameter, as llama.cpp's converter names it."""
    names = gguf.TensorNameMap(ARCH, model.config.num_hidden_layers)
    mapping = {}
    for name, _ in _unique_parameters(model):
        mapped = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if mapped is None:
            raise ModelError(f"no GGUF name for parameter {name}")
        mapping[name] = mapped
    return mapping


def rotary_heads(config, name: str) -> int | None:
    """Heads of a query/key projection (whose rows llama.cpp reorders); None otherwise."""
    if name.endswith("self_attn.q_proj.weight"):
        return config.num_attention_heads
    if name.endswith("self_attn.k_proj.weight"):
        return config.num_key_value_heads
    return None


def permute(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """HF's rotary halves -> llama.cpp's interleaved pairs (``LlamaModel.permute``)."""
    shape = weight.shape
    return (
        weight.reshape(heads, 2, shape[0] // heads // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)
    )


def unpermute(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """The inverse of ``permute``: llama.cpp's row order back to HF's."""
    shape = weight.shape
    return (
        weight.reshape(heads, shape[0] // heads // 2, 2, *shape[1:]).swapaxes(1, 2).reshape(shape)
    )


def _unique_parameters(model: nn.Module):
    """Parameters with a tied LM head listed once, under the embedding's name."""
    seen: set[int] = set()
    for name, param in model.named_parameters():
        if param.data_ptr() not in seen:
            seen.add(param.data_ptr())
            yield name, param


def _rope(config) -> dict:
    return getattr(config, "rope_parameters", None) or {
        "rope_theta": config.rope_theta,
        "rope_type": "default",
    }


def _add_hyperparameters(writer: gguf.GGUFWriter, config, file_type: gguf.LlamaFileType) -> None:
    writer.add_name(getattr(config, "_name_or_path", "") or "mpt model")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(_rope(config)["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_rope_dimension_count(head_dim)
    writer.add_file_type(file_type)


def _add_vocab(writer: gguf.GGUFWriter, tokenizer, vocab_size: int) -> None:
    """The gpt2-style vocabulary, padded to the model's vocab size as the converter pads."""
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    model, pre = backend["model"], backend["pre_tokenizer"] or {}
    if model["type"] != "BPE" or pre.get("type") != "ByteLevel":
        raise ModelError(
            "the GGUF converter writes byte-level BPE tokenizers only; this one is "
            f"{model['type']} with pre-tokenizer {pre.get('type')}"
        )
    by_id = {index: token for token, index in model["vocab"].items()}
    special = {item["id"] for item in backend["added_tokens"] if item["special"]}
    added = {item["id"] for item in backend["added_tokens"]} - special
    tokens, types = [], []
    for index in range(vocab_size):
        if index not in by_id:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(by_id[index])
        types.append(
            gguf.TokenType.CONTROL
            if index in special
            else gguf.TokenType.USER_DEFINED
            if index in added
            else gguf.TokenType.NORMAL
        )
    writer.add_tokenizer_model("gpt2")
    # ByteLevel with the GPT-2 split regex is llama.cpp's "gpt-2" pre-tokenizer.
    writer.add_tokenizer_pre("gpt-2" if pre.get("use_regex", True) else "default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in model["merges"]])
    _add_special_ids(writer, tokenizer)


def _add_special_ids(writer: gguf.GGUFWriter, tokenizer) -> None:
    for setter, token_id in (
        (writer.add_bos_token_id, tokenizer.bos_token_id),
        (writer.add_eos_token_id, tokenizer.eos_token_id),
        (writer.add_unk_token_id, tokenizer.unk_token_id),
        (writer.add_pad_token_id, tokenizer.pad_token_id),
    ):
        if token_id is not None:
            setter(token_id)
    # Whether the tokenizer prepends <bos> is read from what it does, not from a flag.
    ids = tokenizer("a")["input_ids"]
    writer.add_add_bos_token(bool(ids) and ids[0] == tokenizer.bos_token_id)
