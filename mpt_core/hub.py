"""Whether the Hugging Face hub answers, asked once per process, so an offline machine
fails a hub id in a second instead of after the hub client's retries (~50 s), and still
loads what the local hub cache holds."""

from __future__ import annotations

import difflib
import functools
import os
import socket
from urllib.parse import urlparse

PROBE_SECONDS = 3.0
DEFAULT_ENDPOINT = "https://huggingface.co"


@functools.cache
def reachable() -> bool:
    """False under ``HF_HUB_OFFLINE=1`` or when the endpoint's HTTPS port does not answer."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=PROBE_SECONDS).close()
    except OSError:
        return False
    return True


def loading_kwargs() -> dict:
    """What ``from_pretrained`` needs so it reads only the local cache when offline."""
    return {} if reachable() else {"local_files_only": True}


def unreachable_hint(name: str, known: list[str]) -> str:
    """The end of a load error for a hub id on an offline machine: the nearest known name."""
    close = (
        difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        or [k for k in known if k.startswith(name)][:1]
    )
    hint = f"; did you mean {close[0]}?" if close else ""
    return f"the hub is unreachable and its local cache has no {name!r}{hint}"
