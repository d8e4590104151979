"""On a GPU: the restore snapshot adds no device memory, and a model offloaded to host memory
(one block at a time on the GPU) compresses to the same weights as the model held on the GPU.
Prints one line; exits non-zero on a failure. ``scripts/gpu_check.sh`` runs it.

    python scripts/offload_check.py [--spec sparsegpt:0.5]
"""

from __future__ import annotations

import argparse
import sys

import torch

from mpt_core.models import load_model, offload, state_dict_hash
from mpt_core.pipeline import compress
from mpt_core.snapshot import Snapshot
from mpt_core.spec import Spec


class RandomWindows:
    """Calibration windows of random byte tokens: no data files, the same for both runs."""

    def __init__(self):
        generator = torch.Generator().manual_seed(0)
        self._windows = torch.randint(2, 258, (8, 64), generator=generator)

    def windows(self, _settings):
        return self._windows


def compressed_hash(spec: str, offloaded: bool) -> str:
    loaded = load_model("tiny-llama", device="cpu" if offloaded else "cuda")
    if offloaded:
        offload(loaded.model, "cuda")
    compress(loaded.model, Spec.parse(spec), RandomWindows())
    return state_dict_hash(loaded.model)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="sparsegpt:0.5")
    spec = parser.parse_args().spec
    loaded = load_model("tiny-llama", device="cuda")
    before = torch.cuda.memory_allocated()
    snapshot = Snapshot(loaded.model)
    added = torch.cuda.memory_allocated() - before
    same = compressed_hash(spec, offloaded=False) == compressed_hash(spec, offloaded=True)
    del snapshot
    print(f"snapshot adds {added} bytes on the GPU; {spec} offloaded == resident: {same}")
    return 0 if added == 0 and same else 1


if __name__ == "__main__":
    sys.exit(main())
