"""Arguments shared by the commands that measure a model."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from mpt_core.data import DATASETS
from mpt_core.errors import MptError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        help="smollm2-135m, tiny-llama, a local directory, a .gguf file or a hub id",
    )
    parser.add_argument("--dataset", default="wikitext2", choices=DATASETS)
    parser.add_argument("--seqlen", type=int, default=512, help="tokens per window")
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


def open_session(args: argparse.Namespace):
    from mpt_core.measure import Session

    check_protocol(args)
    return Session.open(args.model, args.seqlen, args.device, DTYPES.get(args.dtype))


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
