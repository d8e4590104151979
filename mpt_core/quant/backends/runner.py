"""The library side of a backend: runs inside the library's own virtual environment.

mpt writes a job folder (``mpt_core.quant.backends.venv``) and runs this file with the
backend venv's python in isolated mode (``python -I runner.py JOB``): isolation keeps
this folder, whose ``gptqmodel.py`` and ``llmcompressor.py`` are mpt's modules, off
``sys.path``, so ``import gptqmodel`` finds the library. The file imports only the
standard library, torch, safetensors and the library (which brings transformers).

Reads:
  JOB/job.json                   library, method, bits, group (null: whole row), sym,
                                 act_order, static_groups, damp
  JOB/model/                     the model as mpt holds it (safetensors, config, tokenizer)
  JOB/calibration.safetensors    ``input_ids`` (nsamples, seqlen): mpt's calibration windows
Writes:
  JOB/result/weights.safetensors every decoder-layer tensor after the library's work, each
                                 quantized weight as the library dequantizes it
  JOB/result/facts.json          the library's version, and per quantized weight the
                                 tensors its checkpoint stores (shape, dtype, bytes)
  JOB/result/checkpoint/         the library's own quantized checkpoint
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import version
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

LAYER_PREFIX = "model.layers."


def main(job_dir: Path) -> None:
    job = json.loads((job_dir / "job.json").read_text())
    windows = load_file(str(job_dir / "calibration.safetensors"))["input_ids"]
    result = job_dir / "result"
    checkpoint = result / "checkpoint"
    quantize = {"gptqmodel": quantize_gptqmodel, "llmcompressor": quantize_llmcompressor}
    weights = quantize[job["library"]](job, job_dir / "model", windows, checkpoint)
    save_file(weights, str(result / "weights.safetensors"))
    facts = {
        "library": job["library"],
        "version": version(job["library"]),
        "checkpoint_bytes": sum(f.stat().st_size for f in checkpoint.glob("*.safetensors")),
        "stored": stored_tensors(checkpoint, weights),
    }
    (result / "facts.json").write_text(json.dumps(facts, indent=1))


def stored_tensors(checkpoint: Path, weights: dict[str, torch.Tensor]) -> dict:
    """Per quantized weight (``...q_proj.weight``), every tensor the checkpoint keeps for its
    module, by suffix (``qweight``, ``scales``, ``weight_packed`` ...): shape, dtype, bytes."""
    modules = {name.removesuffix(".weight") for name in weights if name.endswith(".weight")}
    stored: dict[str, dict] = {}
    for path in sorted(checkpoint.glob("*.safetensors")):
        with safe_open(str(path), "pt") as handle:
            keys = handle.keys()  # a safetensors handle is not iterable itself
            for key in keys:
                module, _, suffix = key.rpartition(".")
                if module not in modules or suffix == "weight":
                    continue
                tensor = handle.get_tensor(key)
                stored.setdefault(f"{module}.weight", {})[suffix] = {
                    "shape": list(tensor.shape),
                    "dtype": str(tensor.dtype).removeprefix("torch."),
                    "bytes": tensor.numel() * tensor.element_size(),
                }
    return stored


def layer_tensors(model: torch.nn.Module, model_dir: Path) -> dict[str, torch.Tensor]:
    """The decoder-layer tensors of the model mpt wrote, as ``model`` holds them now; a
    quantized module no longer has its ``weight`` here (the caller dequantizes it)."""
    state = model.state_dict()
    tensors = {}
    for path in model_dir.glob("*.safetensors"):
        with safe_open(str(path), "pt") as handle:
            names = handle.keys()
            for name in names:
                if name.startswith(LAYER_PREFIX) and name in state:
                    tensors[name] = state[name].detach().float().contiguous()
    return tensors


def quantize_gptqmodel(job: dict, model_dir: Path, windows: torch.Tensor, out: Path) -> dict:
    """GPTQ through gptqmodel, configured as mpt's ``gptq`` options say. gptqmodel's own
    defaults differ from the paper's (symmetric grid, damp 0.05, group-aware activation
    reordering, true-sequential); each is set explicitly so that only the library's
    implementation differs. ``pack_impl="original"`` packs in Python: the default packer is a
    C++ extension compiled at first use (minutes on a busy 2-core machine)."""
    from gptqmodel import BACKEND, GPTQModel, QuantizeConfig

    config = QuantizeConfig(
        bits=job["bits"],
        group_size=job["group"] or -1,
        sym=job["sym"],
        desc_act=job["act_order"],
        static_groups=job["static_groups"],
        damp_percent=job["damp"],
        act_group_aware=False,
        true_sequential=False,
        offload_to_disk=False,
        pack_impl="original",
    )
    model = GPTQModel.load(str(model_dir), config, device="cpu", dtype=torch.float32)
    calibration = [{"input_ids": w, "attention_mask": torch.ones_like(w)} for w in windows]
    model.quantize(calibration, batch_size=1)
    weights = layer_tensors(model.model, model_dir)
    model.save(str(out))
    # The freshly packed modules hold the checkpoint's zero points (GPTQ v1 stores zero - 1);
    # a model loaded from the checkpoint has them converted for its kernels.
    quantized = GPTQModel.load(str(out), device="cpu", backend=BACKEND.GPTQ_TORCH)
    for name, module in quantized.model.named_modules():
        if hasattr(module, "qweight"):
            # dequantize_weight() is (in, out): the packed integers times the fp16 scales
            weights[f"{name}.weight"] = module.dequantize_weight().t().float().contiguous()
    return weights


def quantize_llmcompressor(job: dict, model_dir: Path, windows: torch.Tensor, out: Path) -> dict:
    """GPTQ or AWQ through llmcompressor's ``oneshot`` on mpt's windows, in their order.
    The weights returned are the library's own fake quantization (``forward_quantize``) of
    each module's weight with the scales and zero points it chose."""
    from compressed_tensors.quantization import forward_quantize
    from datasets import Dataset
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not torch.accelerator.is_available():
        allow_awq_without_accelerator()
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    dataset = Dataset.from_dict(
        {"input_ids": windows.tolist(), "attention_mask": torch.ones_like(windows).tolist()}
    )
    oneshot(
        model=model,
        tokenizer=tokenizer,
        dataset=dataset,
        recipe=llmcompressor_recipe(job),
        max_seq_length=windows.shape[1],
        num_calibration_samples=windows.shape[0],
        shuffle_calibration_samples=False,
        pipeline="sequential",
    )
    weights = layer_tensors(model, model_dir)
    with torch.no_grad():
        for name, module in model.named_modules():
            scheme = getattr(module, "quantization_scheme", None)
            if scheme is None or scheme.weights is None or not name.startswith(LAYER_PREFIX):
                continue
            quantized = forward_quantize(module, module.weight, "weight", scheme.weights)
            weights[f"{name}.weight"] = quantized.float().contiguous()
    model.save_pretrained(str(out), save_compressed=True)
    return weights


def allow_awq_without_accelerator() -> None:
    """llmcompressor 0.14's AWQ pins its cached activations in page-locked memory for faster
    host-to-device copies, and pinning raises where there is no accelerator. Pinning changes
    no value, so on a CPU-only machine it is skipped."""
    from llmcompressor.pipelines.cache import IntermediatesCache

    IntermediatesCache.pin_memory = lambda self, *args, **kwargs: None


def llmcompressor_recipe(job: dict) -> list:
    """The modifiers for ``job``: an integer weight-only scheme on every decoder linear.

    llmcompressor's GPTQ finds every group's grid on the weights before the sweep (mpt's
    ``static_groups``) whatever mpt asked; ``act_order`` maps to its ``actorder="group"``
    (dynamic groups in activation order) or, with static groups, ``"weight"``. AWQ runs
    the paper's activation-only scale search (``duo_scaling=False``)."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
    from llmcompressor.modifiers.transform.awq import AWQModifier

    group = job["group"]
    weights = QuantizationArgs(
        num_bits=job["bits"],
        type="int",
        symmetric=job["sym"],
        strategy="group" if group else "channel",
        group_size=group,
    )
    schemes = {"group_0": QuantizationScheme(targets=["Linear"], weights=weights)}
    if job["method"] == "awq":
        return [
            AWQModifier(duo_scaling=False),
            QuantizationModifier(config_groups=schemes, ignore=["lm_head"]),
        ]
    actorder = None
    if job["act_order"]:
        actorder = "weight" if job["static_groups"] else "group"
    return [
        GPTQModifier(
            config_groups=schemes,
            ignore=["lm_head"],
            dampening_frac=job["damp"],
            actorder=actorder,
        )
    ]


if __name__ == "__main__":
    main(Path(sys.argv[1]))
