#!/usr/bin/env bash
# Create .venv-<backend>, the virtual environment a library backend runs from, in the
# repository root (or in $MPT_BACKEND_VENVS, where mpt then looks for it too).
#
# gptqmodel and llmcompressor pin transformers versions of their own, so neither is
# installed next to mpt: mpt hands them a model folder and its calibration windows and
# runs mpt_core/quant/backends/runner.py with the venv's python (torch, safetensors and
# the library are all that script imports). torch is installed first and pinned: on
# this machine torch==2.13.0 is the CPU wheel, anything else pulls a multi-GB CUDA build;
# elsewhere $MPT_TORCH_INDEX_URL names the index of the CPU wheels.
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
  gptqmodel) LIBRARY="gptqmodel==7.6.0" ;;
  llmcompressor) LIBRARY="llmcompressor==0.14.0.1" ;;
  *)
    echo "usage: $0 gptqmodel|llmcompressor" >&2
    exit 2
    ;;
esac

VENV="${MPT_BACKEND_VENVS:-.}/.venv-$1"
python3 -m venv "$VENV"
nice -n 10 "$VENV/bin/pip" install torch==2.13.0 ${MPT_TORCH_INDEX_URL:+--index-url "$MPT_TORCH_INDEX_URL"}
nice -n 10 "$VENV/bin/pip" install "$LIBRARY"
