"""Root conftest: only what must be here. The harness itself is mpt_core.harness.plugin."""

import os
from pathlib import Path

_SHARED_DATA = Path(__file__).resolve().parent.parent / "shared" / "data"
if "MPT_DATA_DIR" not in os.environ and _SHARED_DATA.is_dir():
    os.environ["MPT_DATA_DIR"] = str(_SHARED_DATA)
