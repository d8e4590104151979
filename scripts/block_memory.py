"""Peak memory of compressing one decoder block of a given shape with Wanda and SparseGPT.

A LLaMA block with random weights of the real shapes (LLaMA-2-7B by default: hidden 4096,
MLP 11008, 32 heads) and random calibration inputs (``--nsamples`` x ``--seqlen``) is pruned
at 50% by the engine exactly as a model's block is (statistics hooks, then each linear),
on ``--device``; prints the seconds and, on CUDA, the peak allocated memory of each method.
``--small`` shrinks every shape 16x so that the check runs on a CPU (CI).

Usage: ``python scripts/block_memory.py [--device cuda] [--small]``
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

from mpt_core.engine.layerwise import LayerInputs, collect_stats, linear_layers
from mpt_core.engine.signals import HessianStats, InputNormStats
from mpt_core.prune import sparsegpt, wanda
from mpt_core.spec import parse_stage

SHAPES = {"hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32}


def block_and_inputs(device: str, dtype, small: bool, nsamples: int, seqlen: int):
    scale = 16 if small else 1
    config = LlamaConfig(
        hidden_size=SHAPES["hidden_size"] // scale,
        intermediate_size=SHAPES["intermediate_size"] // scale,
        num_attention_heads=SHAPES["num_attention_heads"] // min(scale, 8),
        num_key_value_heads=SHAPES["num_attention_heads"] // min(scale, 8),
        num_hidden_layers=1,
    )
    config._attn_implementation = "sdpa"
    generator = torch.Generator(device="cpu").manual_seed(0)
    block = LlamaDecoderLayer(config, layer_idx=0).to(device=device, dtype=dtype)
    with torch.no_grad():
        for parameter in block.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
    hidden = torch.randn(nsamples, seqlen, config.hidden_size, generator=generator)
    hidden = hidden.to(device=device, dtype=dtype)
    positions = torch.arange(seqlen, device=device)[None]
    rotary = LlamaRotaryEmbedding(config).to(device)(hidden, positions)
    kwargs = {"position_embeddings": rotary, "attention_mask": None, "use_cache": False}
    return block, LayerInputs(hidden, kwargs)


def prune_block(block, inputs, method: str) -> None:
    stage = parse_stage(f"{method}:0.5")
    stats_of = {"wanda": InputNormStats, "sparsegpt": HessianStats}[method]
    stats = collect_stats(block, inputs, lambda _site, linear: stats_of(linear), 0)
    settings = {"blocksize": 128, "damp": 0.01}
    for name, linear in linear_layers(block).items():
        module = wanda if method == "wanda" else sparsegpt
        module.prune_linear(linear, stats.pop(name), stage, settings)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--nsamples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=2048)
    args = parser.parse_args(argv)
    dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
    for method in ("wanda", "sparsegpt"):
        block, inputs = block_and_inputs(args.device, dtype, args.small, args.nsamples, args.seqlen)
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        prune_block(block, inputs, method)
        seconds = time.perf_counter() - started
        peak = (
            f"peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
            if args.device.startswith("cuda")
            else "peak: CUDA only"
        )
        weights = [linear.weight for linear in linear_layers(block).values()]
        sparsity = sum((w == 0).sum().item() for w in weights) / sum(w.numel() for w in weights)
        where = f"one block on {args.device}"
        print(f"{method}: {where}, {seconds:.1f} s, {peak}, sparsity {sparsity:.3f}")
        del block, inputs
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
