"""Arguments shared by the commands that measure a model."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

import torch

from mpt_core.data import DATASETS
from mpt_core.errors import MptError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def finite_float(text: str) -> float:
    """An argparse type: a finite number (argparse's ``float`` takes nan and inf)."""
    try:
        number = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return number


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        help="smollm2-135m, tiny-llama, a local directory, a .gguf file or a hub id",
    )
    parser.add_argument("--dataset", default="wikitext2", choices=DATASETS)
    parser.add_argument("--seqlen", type=int, default=512, help="tokens per window")
    parser.add_argument(
        "--allow-long-context",
        action="store_true",
        help="measure at a --seqlen past the model's context (max_position_embeddings)",
    )
    parser.add_argument(
        "--windows", type=int, default=None, help="evaluate only the first N windows (default: all)"
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if any)")
    parser.add_argument(
        "--dtype",
        default=None,
        choices=sorted(DTYPES),
        help="default: float32 on CPU, bfloat16/float16 on CUDA",
    )
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bars on stderr (they are drawn only when stderr is a terminal)",
    )


def check_protocol(args: argparse.Namespace) -> None:
    if args.seqlen < 2:
        raise MptError(f"--seqlen {args.seqlen} is too short: use at least 2 tokens")
    if args.windows is not None and args.windows < 1:
        raise MptError(f"--windows {args.windows}: use a positive number of windows")


def check_out(path: str | None) -> None:
    """Refuse an ``--out`` that cannot take records before anything is measured: a point
    measured for minutes is never lost to a bad path."""
    if path is None:
        return
    out = Path(path)
    if out.is_dir():
        raise MptError(f"--out {path} is a folder: name a .jsonl file in it")
    if not out.parent.is_dir():
        raise MptError(f"--out {path}: folder {out.parent} does not exist: create it first")
    if out.exists() and not os.access(out, os.W_OK):
        raise MptError(f"--out {path} is not writable")
    if not out.exists() and not os.access(out.parent, os.W_OK):
        raise MptError(f"--out {path}: folder {out.parent} is not writable")


def check_context(args: argparse.Namespace, loaded) -> None:
    """Refuse a ``--seqlen`` past the model's positions: its windows would be measured on
    positions it never learned (tiny-llama at 100,000 of its 512 gives ``PPL ... ± nan``).
    Here and not in ``measure.Session``: the harness's rehearsal measures small stand-ins
    at the study's seqlens on purpose."""
    config = getattr(loaded.model, "config", None)
    # a multimodal model (Gemma-3 4B/12B/27B) keeps its positions in its text config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    context = getattr(text, "max_position_embeddings", None)
    if args.allow_long_context or not isinstance(context, int) or args.seqlen <= context:
        return
    raise MptError(
        f"--seqlen {args.seqlen} is longer than {loaded.name}'s context of {context} "
        f"positions: use --seqlen {context} or less, or --allow-long-context to measure anyway"
    )


def open_session(args: argparse.Namespace):
    """The measuring session of ``args``: the protocol checked before the model loads, the
    context right after it loads, both before anything is compressed or measured."""
    from mpt_core.measure import Session
    from mpt_core.models import load_model

    check_protocol(args)
    loaded = load_model(args.model, args.device, DTYPES.get(args.dtype))
    check_context(args, loaded)
    return Session(loaded, args.seqlen)


def describe(record) -> str:
    """The human line for one record."""
    fp = record.footprint
    ppl = (
        f"PPL {record.value:.4f} ± {record.stderr:.4f}"
        if not record.collapsed
        else "PPL inf (collapsed)"
    )
    return (
        f"{record.model}  {record.spec}  {record.dataset}  seqlen={record.seqlen} "
        f"windows={record.windows}  {ppl}  size {fp['bytes'] / 1e6:.1f} MB "
        f"({100 * fp['relative_size']:.1f}% of fp16, {fp['bits_per_weight']:.2f} bits/w, "
        f"sparsity {fp['sparsity']:.3f})  "
        f"{record.seconds['compress'] + record.seconds['evaluate']:.1f} s"
    )
