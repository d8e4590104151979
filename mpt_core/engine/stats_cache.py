"""Method statistics kept on disk under the key of what they depend on, for later sessions.

A method's costly statistic (ASVD's activation scales and sensitivity table) is a function
of the weights, the calibration windows, its options and its code; the method digests
those into a key, and the statistic is stored at ``$MPT_CACHE_DIR/stats/<method>-<key>.pt``
(``mpt_core.models.cache_dir``, default ``~/.cache/mpt``). A changed input is another key:
entries are invalidated by the key, never by time, and old ones are merely unused.
``MPT_STATS_CACHE=0`` turns the disk cache off (a method's in-session memo stays).

Files are written atomically (a temporary file in the same folder, then ``os.replace``) with
``torch.save`` of CPU tensors and plain Python values, and read with
``torch.load(weights_only=True)``. A file that cannot be read or decoded is a miss, with a
warning: the method recomputes the statistic and overwrites it.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

from mpt_core.models import cache_dir

T = TypeVar("T")


def enabled() -> bool:
    return os.environ.get("MPT_STATS_CACHE", "1") != "0"


def cache_path(method: str, key: str) -> Path:
    return cache_dir() / "stats" / f"{method}-{key}.pt"


def load(method: str, key: str, decode: Callable[[object], T]) -> T | None:
    """``decode`` of the stored statistic, or None when off, absent or unreadable (warned)."""
    path = cache_path(method, key)
    if not enabled() or not path.is_file():
        return None
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
        if stored["key"] != key:
            raise ValueError("the file holds another key")
        return decode(stored["value"])
    except Exception as error:  # whatever is wrong with the file, recompute it
        warnings.warn(f"{path}: unreadable statistics cache ({error!r}); recomputing", stacklevel=2)
        return None


def store(method: str, key: str, value: object) -> None:
    """Write ``value`` (CPU tensors, plain values) atomically; a failed write only warns."""
    if not enabled():
        return
    path = cache_path(method, key)
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as handle:
            temporary = handle.name
            torch.save({"key": key, "value": value}, handle)
        os.replace(temporary, path)
    except OSError as error:
        warnings.warn(f"{path}: statistics cache not written ({error})", stacklevel=2)
        if temporary is not None and os.path.exists(temporary):
            os.remove(temporary)
