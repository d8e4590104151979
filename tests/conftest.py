"""Shared fixtures of the unit tests: offline data, the tiny model, running the real CLI.

``MPT_DATA_DIR`` defaults to ``../shared/data`` next to the repository when that folder
exists and the variable is unset; it is set in ``os.environ`` so that CLI subprocesses
inherit it. Tests that need the offline text use ``needs_data``. ``MPT_STATS_CACHE=0``
keeps method statistics off the disk cache.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mpt_core.baselines import BaselineRow

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

if not os.environ.get("MPT_DATA_DIR") and SHARED_DATA.is_dir():
    os.environ["MPT_DATA_DIR"] = str(SHARED_DATA)
# Method statistics are not read from or written to the user's disk cache by the suite:
# a test that counts computations would pass or fail with the cache's history. Tests of
# the disk cache turn it on for a temporary $MPT_CACHE_DIR (tests/test_asvd_cache.py).
os.environ["MPT_STATS_CACHE"] = "0"


def offline_file(relative: str) -> Path | None:
    """The offline data file ``relative`` under $MPT_DATA_DIR, or None when absent."""
    root = os.environ.get("MPT_DATA_DIR")
    if not root:
        return None
    path = Path(root) / relative
    return path if path.is_file() else None


HAS_WIKITEXT = offline_file("wikitext-2-raw/wiki.test.raw") is not None
HAS_PTB = (
    offline_file("ptb/ptb.test.txt") is not None and offline_file("ptb/ptb.valid.txt") is not None
)

needs_data = pytest.mark.skipif(
    not (HAS_WIKITEXT and HAS_PTB),
    reason="needs MPT_DATA_DIR laid out like shared/data (wikitext-2-raw, ptb)",
)


def table2_row(
    spec: str, dataset: str = "wikitext2", model: str = "llama2-7b", tier: str = "study"
) -> BaselineRow:
    """A perplexity row of the study's Table 2 (its protocol is protocols.toml's), or the same
    row on another tier."""
    table2 = REPO / "baselines" / "study" / "table2.csv"
    return BaselineRow(
        model,
        dataset,
        spec,
        "ppl",
        "5.0",
        None,
        None,
        "",
        None,
        "",
        "table2",
        tier,
        file=str(table2),
    )


def cli_env(**overrides: str | None) -> dict[str, str]:
    """The environment of a CLI subprocess: offline, one torch thread (the tiny model gains
    nothing from more, and on a shared machine spinning threads cost far more), with
    ``overrides`` (None unsets)."""
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 180
) -> subprocess.CompletedProcess:
    """``python -m mpt_core.cli ARGS`` in a subprocess, text output captured."""
    return subprocess.run(
        [sys.executable, "-m", "mpt_core.cli", *args],
        capture_output=True,
        text=True,
        env=env or cli_env(),
        cwd=REPO,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def cli():
    """The function that runs the real CLI in a subprocess (see ``run_cli``)."""
    return run_cli


@pytest.fixture
def one_thread():
    """Run a test with one torch thread: the tiny model gains nothing from more, and on a
    busy shared machine idle-spinning worker threads make it many times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny():
    """tiny-llama on the CPU in fp32, loaded once; tests that change it must restore it."""
    from mpt_core.models import load_model

    return load_model("tiny-llama", device="cpu")


# The tests' tiny random decoders of every study architecture (hidden 64, 2 blocks, GQA)
TINY_SHAPE = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=256,
)


def tiny_gemma3_multimodal(vocab_size: int = 320):
    """Gemma-3 4B/12B/27B's class (``Gemma3ForConditionalGeneration``) at a tiny size: a
    2-block Gemma-3 text decoder (hidden 64) beside a one-layer SigLIP vision encoder (28-pixel
    images of 14-pixel patches, pooled to 4 image tokens; the last token id is the image's),
    random weights from the caller's seed, eval mode."""
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3TextConfig,
        SiglipVisionConfig,
    )

    text = Gemma3TextConfig(
        vocab_size=vocab_size, sliding_window=16, query_pre_attn_scalar=16, **TINY_SHAPE
    )
    vision = SiglipVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=28,
        patch_size=14,
    )
    config = Gemma3Config(
        text_config=text.to_dict(),
        vision_config=vision.to_dict(),
        mm_tokens_per_image=4,
        image_token_id=vocab_size - 1,
    )
    return Gemma3ForConditionalGeneration(config).eval()


@pytest.fixture
def fresh_tiny():
    """A tiny-llama of its own for a test that changes weights or structure."""
    from mpt_core.models import load_model

    return load_model("tiny-llama", device="cpu")


@pytest.fixture(scope="session")
def wikitext_ids(tiny):
    """Token ids (1, n) of the first 40,000 characters of the offline WikiText-2 test text."""
    if not HAS_WIKITEXT:
        pytest.skip("needs MPT_DATA_DIR with wikitext-2-raw/wiki.test.raw")
    from mpt_core.data import load_text

    text = load_text("wikitext2", "test").text[:40_000]
    return tiny.tokenizer(text, return_tensors="pt").input_ids


class FixedCalibration:
    """Calibration windows fixed by the test: random byte tokens, no data files needed.
    ``honour_nsamples`` serves only the first ``nsamples`` of a method's settings."""

    def __init__(
        self, nsamples: int = 8, seqlen: int = 32, seed: int = 0, honour_nsamples: bool = False
    ):
        import torch

        generator = torch.Generator().manual_seed(seed)
        self._windows = torch.randint(2, 258, (nsamples, seqlen), generator=generator)
        self.honour_nsamples = honour_nsamples

    def windows(self, settings):
        if self.honour_nsamples:
            return self._windows[: settings["nsamples"]]
        return self._windows


@pytest.fixture
def fixed_calibration():
    """``FixedCalibration``, to build the windows a test needs: ``fixed_calibration(4, 16)``."""
    return FixedCalibration
