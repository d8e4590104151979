"""Scale-out of the regression suite: CI shards, pytest-xdist workers, one GPU each.

- ``--mpt-shard i/n`` keeps shard i (1-based) of n: the tests that measure a common point
  form a unit (``collection.shard_by_cost``) and ``balance`` spreads the units' estimated
  seconds (``harness.costs``) evenly, so the runners of a CI matrix finish together and a
  point compresses on one of them. Every runner computes the same partition from the same
  selection without talking to the others; the price is that the partition is a function of
  the whole selection, not of a test's id: a test may change shard when others are added or
  removed. Tests with no estimated cost go by a hash of their id (``in_shard``).
- ``pytest -n N`` (pytest-xdist): worker ``gwK`` takes GPU ``K mod (visible GPUs)``
  (``torch.cuda.set_device``, and ``CUDA_VISIBLE_DEVICES`` for its subprocesses).
- Records: each worker appends (and fsyncs) to its own part file beside
  ``--mpt-results`` (``results.gw0.jsonl``, ...), so concurrent workers never write
  one file; the controller merges the parts into ``--mpt-results`` at session end,
  each point once. Parts an interrupted run left behind are merged by the next run.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from mpt_core.errors import MptError
from mpt_core.records import append, read

_SHARD = re.compile(r"^(\d+)/(\d+)$")
_WORKER = re.compile(r"^gw(\d+)$")


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/4"`` -> (2, 4); shards count from 1."""
    match = _SHARD.match(text.strip())
    if not match or not 1 <= int(match.group(1)) <= int(match.group(2)):
        raise MptError(f"--mpt-shard {text!r}: write i/n with 1 <= i <= n, e.g. 1/4")
    return int(match.group(1)), int(match.group(2))


def in_shard(nodeid: str, index: int, count: int) -> bool:
    """Whether the test ``nodeid`` belongs to shard ``index`` of ``count``."""
    digest = hashlib.sha256(nodeid.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count == index - 1


def balance(costs: dict[str, float], count: int) -> dict[str, int]:
    """Unit -> shard (1-based) of ``count``: longest processing time first, each unit (the
    costliest first, ties by id) to the least-loaded shard (ties: the lowest), which keeps
    the heaviest shard within 4/3 of the best partition's (Graham) and is deterministic."""
    loads = [0.0] * count
    chosen = {}
    for unit in sorted(costs, key=lambda name: (-costs[name], name)):
        shard = min(range(count), key=lambda k: (loads[k], k))
        loads[shard] += costs[unit]
        chosen[unit] = shard + 1
    return chosen


def worker_number(worker_id: str | None) -> int | None:
    """``"gw3"`` -> 3; None outside an xdist worker."""
    match = _WORKER.match(worker_id or "")
    return int(match.group(1)) if match else None


def gpu_for_worker(number: int, visible: list[str]) -> tuple[int, str]:
    """(index among the visible GPUs, its CUDA_VISIBLE_DEVICES name) for worker ``number``."""
    index = number % len(visible)
    return index, visible[index]


def pin_worker_gpu(worker_id: str | None) -> str | None:
    """Give this xdist worker its own GPU; returns the GPU's name, None without CUDA."""
    import torch

    number = worker_number(worker_id)
    if number is None or not torch.cuda.is_available():
        return None
    listed = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    visible = [name.strip() for name in listed.split(",") if name.strip()] or [
        str(i) for i in range(torch.cuda.device_count())
    ]
    index, name = gpu_for_worker(number, visible)
    torch.cuda.set_device(index)
    os.environ["CUDA_VISIBLE_DEVICES"] = name  # subprocesses (the CLI) see only this GPU
    return name


def part_path(results: str | Path, worker_id: str) -> Path:
    """Where worker ``worker_id`` appends its records: ``results.gw0.jsonl``."""
    results = Path(results)
    return results.with_name(f"{results.stem}.{worker_id}{results.suffix}")


def merge_parts(results: str | Path) -> int:
    """Append every worker part of ``results`` to it (workers in order, records in their
    order) and delete the parts; returns how many records moved. A point two workers both
    measured (each measures the dense reference it checks against) is kept once."""
    results = Path(results)
    name = re.compile(rf"^{re.escape(results.stem)}\.gw(\d+){re.escape(results.suffix)}$")
    numbered = [
        (int(match.group(1)), path)
        for path in results.parent.glob(f"{results.stem}.gw*")
        if (match := name.match(path.name))
    ]
    seen: set[tuple] = set()
    for _, part in sorted(numbered):
        for record in read(part):
            if record.key not in seen:
                append(results, record)
                seen.add(record.key)
        part.unlink()
    return len(seen)
