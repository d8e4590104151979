#!/usr/bin/env bash
# A ten-minute check of the study tier's machinery on one GPU (issue #20), one line a check
# and a summary. Without CUDA it runs what the CPU can: the foreign-device test (meta as the
# default device) and a block 16x smaller; CI runs that part.
#   bash scripts/gpu_check.sh            # after the README's setup, in the repository root
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
cuda=$($PY -c 'import torch; print(int(torch.cuda.is_available()))')
results=()

check() {  # check NAME COMMAND...: run it, keep its last line, record pass/fail
  local name=$1; shift
  local log; log=$(mktemp)
  if "$@" >"$log" 2>&1; then results+=("PASS $name"); else results+=("FAIL $name"); fi
  echo "$name: $(tail -n 1 "$log")"
}

if [ "$cuda" = 1 ]; then
  check "every method on CUDA weights, CPU default device" \
    env MPT_TEST_DEVICE=cuda $PY -m pytest -q -p no:randomly tests/test_foreign_device.py
  check "one LLaMA-2-7B block, Wanda and SparseGPT (peak memory)" \
    $PY scripts/block_memory.py --device cuda
  check "host-memory snapshot, block offload bit-identical" $PY scripts/offload_check.py
  check "rehearsal of the study tier's sample on CUDA, fp16 (tiny-llama)" \
    $PY -m pytest -q -p no:randomly benchmarks -m gpu --mpt-rehearse tiny-llama --mpt-smoke
  if $PY -c 'import huggingface_hub as h; h.model_info("meta-llama/Llama-2-7b-hf")' >/dev/null 2>&1; then
    check "Table 2: magnitude and Wanda at 50% on LLaMA-2-7B" \
      $PY -m pytest -q -p no:randomly benchmarks -m gpu \
      -k "llama2-7b and wikitext2 and (magnitude:0.5 or wanda:0.5) and table2"
  else
    results+=("SKIP Table 2 rows: the hub is not reachable (set HF_TOKEN for meta-llama)")
  fi
else
  check "every method with meta as the default device (CPU)" \
    $PY -m pytest -q -p no:randomly tests/test_foreign_device.py
  check "one block at 1/16 of LLaMA-2-7B's shapes, Wanda and SparseGPT (CPU)" \
    $PY scripts/block_memory.py --device cpu --small --nsamples 2 --seqlen 128
fi

printf '%s\n' "${results[@]}"
! printf '%s\n' "${results[@]}" | grep -q '^FAIL'
