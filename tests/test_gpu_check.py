"""scripts/gpu_check.sh's CPU-runnable parts (issue #20): the foreign-device test runs in the
suite itself; here the block-memory check at 1/16 of LLaMA-2-7B's shapes."""

from __future__ import annotations

import subprocess
from pathlib import Path

from scripts_loader import load_script

ROOT = Path(__file__).resolve().parent.parent


def test_a_small_block_is_pruned_to_half_by_wanda_and_sparsegpt(capsys):
    block_memory = load_script("block_memory")
    assert (
        block_memory.main(["--device", "cpu", "--small", "--nsamples", "2", "--seqlen", "32"]) == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["wanda", "sparsegpt"]
    assert all("sparsity 0.500" in line for line in lines)


def test_the_gpu_check_script_parses():
    assert subprocess.run(["bash", "-n", str(ROOT / "scripts" / "gpu_check.sh")]).returncode == 0
