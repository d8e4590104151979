#!/usr/bin/env bash
# Record (or resume) the CPU-tier baselines of SmolLM2-135M, one grid after another.
# Usage: scripts/record_cpu_tier.sh [family ...]   (default: every grid in baselines/cpu/grids)
# Grids run one at a time on purpose: two calibrated recorders at once exhaust 24 GiB.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${MPT_DATA_DIR:?set MPT_DATA_DIR to the offline data folder}"
families=("$@")
if [ ${#families[@]} -eq 0 ]; then
  for grid in baselines/cpu/grids/*.txt; do families+=("$(basename "$grid" .txt)"); done
fi
for family in "${families[@]}"; do
  .venv/bin/mpt baselines record --model smollm2-135m --family "$family" --seqlen 512 --windows 8
done
