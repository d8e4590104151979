#!/usr/bin/env bash
# Record (or resume) the tiny tier: every registered method on tiny-llama (seconds a point),
# then each grid's noise floors. CI guards these points; rerun after a grid changes.
# Usage: scripts/record_tiny_tier.sh [family ...]   (default: every grid in baselines/cpu/grids/tiny-llama)
set -euo pipefail
cd "$(dirname "$0")/.."
: "${MPT_DATA_DIR:?set MPT_DATA_DIR to the offline data folder}"
grids=baselines/cpu/grids/tiny-llama
families=("$@")
if [ ${#families[@]} -eq 0 ]; then
  for grid in "$grids"/*.txt; do families+=("$(basename "$grid" .txt)"); done
fi
for family in "${families[@]}"; do
  out="baselines/cpu/tiny-llama/$family.csv"
  .venv/bin/mpt baselines record --model tiny-llama --family "$family" --grid "$grids/$family.txt" \
    --seqlen 64 --windows 4 --device cpu --out "$out"
  .venv/bin/mpt baselines noise --model tiny-llama --seqlen 64 --windows 4 --device cpu --csv "$out"
done
