#!/usr/bin/env bash
# The one setup step of gguf:SCHEME: llama-cpp-python (llama.cpp's quantizer) in .venv.
#
# Building it from its sdist takes ~10 min on 2 cores, so the wheel is built once into
# a cache ($MPT_WHEEL_CACHE, default ~/.cache/mpt-wheels) and installed from there.
# GGML_NATIVE=OFF gives a portable build: a native build on an AMX CPU segfaults when
# llama.cpp runs a quantized model (quantizing works either way).
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=0.3.36
CACHE="${MPT_WHEEL_CACHE:-$HOME/.cache/mpt-wheels}"
PIP=".venv/bin/pip"

if ! ls "$CACHE"/llama_cpp_python-"$VERSION"-*.whl >/dev/null 2>&1; then
  mkdir -p "$CACHE"
  CMAKE_ARGS="-DGGML_NATIVE=OFF" nice -n 10 "$PIP" wheel --no-deps \
    "llama-cpp-python==$VERSION" -w "$CACHE"
fi
"$PIP" install --only-binary llama-cpp-python --find-links "$CACHE" "llama-cpp-python==$VERSION"
