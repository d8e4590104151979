#!/usr/bin/env bash
# The one setup step of gguf:SCHEME: llama.cpp's quantizer (llama-cpp-python) in .venv, and
# llama.cpp's own converter (convert_hf_to_gguf.py with its conversion/ and gguf-py/) from
# the same release, unpacked into a cache; mpt runs it from there and never copies it.
#
# Building the wheel from its sdist takes ~10 min on 2 cores, so it is built once into a
# cache ($MPT_WHEEL_CACHE, default ~/.cache/mpt-wheels) and installed from there.
# GGML_NATIVE=OFF gives a portable build: a native build on an AMX CPU segfaults when
# llama.cpp runs a quantized model (quantizing works either way). It is a CPU build on a
# GPU runner too: mpt evaluates the quantized weights in torch, llama.cpp only quantizes.
# The converter comes from the sdist's vendor/llama.cpp/, the llama.cpp commit that this
# llama-cpp-python release builds, into $MPT_CACHE_DIR/llama.cpp-$VERSION (mpt looks there).
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=0.3.36
CACHE="${MPT_WHEEL_CACHE:-$HOME/.cache/mpt-wheels}"
CONVERTER="${MPT_CACHE_DIR:-$HOME/.cache/mpt}/llama.cpp-$VERSION"
PIP=".venv/bin/pip"
SDIST="$CACHE/llama_cpp_python-$VERSION.tar.gz"

if [ ! -f "$SDIST" ]; then
  mkdir -p "$CACHE"
  "$PIP" download --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$CACHE"
fi
if ! ls "$CACHE"/llama_cpp_python-"$VERSION"-*.whl >/dev/null 2>&1; then
  CMAKE_ARGS="-DGGML_NATIVE=OFF" nice -n 10 "$PIP" wheel --no-deps "$SDIST" -w "$CACHE"
fi
"$PIP" install --only-binary llama-cpp-python --find-links "$CACHE" "llama-cpp-python==$VERSION"
# the converter's needs beyond mpt's (its requirements-convert_legacy_llama.txt):
# SentencePiece vocabularies (LLaMA-2, Gemma-3) and the protobuf that reads them (5 or later:
# transformers 5 reads a tokenizer.model with it; the converter pins <5 for its own transformers 4)
"$PIP" install "sentencepiece>=0.1.98,<0.3.0" "protobuf>=5"

if [ ! -f "$CONVERTER/convert_hf_to_gguf.py" ]; then
  mkdir -p "$(dirname "$CONVERTER")"
  partial="$(mktemp -d "$CONVERTER.partial.XXXXXX")"
  tar -xzf "$SDIST" -C "$partial" --strip-components=3 \
    "llama_cpp_python-$VERSION/vendor/llama.cpp/convert_hf_to_gguf.py" \
    "llama_cpp_python-$VERSION/vendor/llama.cpp/conversion" \
    "llama_cpp_python-$VERSION/vendor/llama.cpp/gguf-py" \
    "llama_cpp_python-$VERSION/vendor/llama.cpp/LICENSE"
  rm -rf "$CONVERTER"
  mv "$partial" "$CONVERTER"
fi
echo "llama.cpp $VERSION: quantizer installed, converter in $CONVERTER"
