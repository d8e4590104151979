"""llama.cpp's converter, run as it ships: ``python -I llama_cpp_convert.py CONVERTER ARGS...``.

``CONVERTER`` is the folder ``scripts/setup_gguf.sh`` unpacks from the llama-cpp-python
sdist (``convert_hf_to_gguf.py``, its ``conversion/`` package and ``gguf-py/``, the
llama.cpp commit whose quantizer mpt runs); ``ARGS`` are ``convert_hf_to_gguf.py``'s own.
This file imports only the standard library and the converter (``-I`` keeps mpt's
folders off ``sys.path``).

One behaviour differs: the converter names a byte-level BPE tokenizer's pre-tokenizer by a
hash of the ids it gives a fixed text, and stops on a hash it does not list, as it does
for a tokenizer trained for a test or mpt's ``tiny-llama`` byte tokenizer. Such a
tokenizer is written with ``tokenizer.ggml.pre = "default"`` instead. No number depends on
it: ``llama_model_quantize`` reads the file's hyper-parameters and tensors, never its
vocabulary (``src/llama-quant.cpp``: ``load_hparams``, ``load_stats``), and mpt reads back
tensors only. The study's tokenizers are all on the converter's list and take its own path.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

UNLISTED_PRE_TOKENIZER = "default"


def main() -> None:
    converter, *arguments = sys.argv[1:]
    sys.path[:0] = [converter, str(Path(converter) / "gguf-py")]
    from conversion.base import TextModel

    listed = TextModel.get_vocab_base_pre

    def pre_tokenizer(self, tokenizer) -> str:
        try:
            return listed(self, tokenizer)
        except NotImplementedError:  # "BPE pre-tokenizer was not recognized"
            return UNLISTED_PRE_TOKENIZER

    TextModel.get_vocab_base_pre = pre_tokenizer
    script = str(Path(converter) / "convert_hf_to_gguf.py")
    sys.argv = [script, *arguments]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
