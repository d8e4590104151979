"""Evaluation and calibration text: WikiText-2 (raw), PTB, C4.

Offline, files come from ``$MPT_DATA_DIR`` laid out like ``shared/data``
(``wikitext-2-raw/wiki.test.raw``, ``ptb/ptb.{test,valid}.txt``); without it they
come from the hub through ``datasets``. Evaluation text follows the GPTQ/Wanda
protocol: hub WikiText-2 rows joined with "\\n\\n" (the offline ``wiki.test.raw``
is that text already, used as-is); PTB sentences stripped and joined with " ";
C4 validation as GPTQ's ``get_c4_new``. Calibration windows follow GPTQ's
sampler: ``random.seed(seed)``, then each window a random slice of seqlen tokens.
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from mpt_core.errors import DataError

DATASETS = ("wikitext2", "ptb", "c4")
# the split calibration windows are drawn from: never an evaluation split
CALIBRATION_SPLITS = {"ptb": "validation", "wikitext2": "train", "c4": "train"}
_OFFLINE_FILES = {
    ("wikitext2", "test"): "wikitext-2-raw/wiki.test.raw",
    ("ptb", "test"): "ptb/ptb.test.txt",
    ("ptb", "validation"): "ptb/ptb.valid.txt",
}
C4_EVAL_DOCS, C4_EVAL_WINDOWS = 1100, 256


@dataclass(frozen=True)
class Text:
    """A data split as one string, with where it came from and its sha256."""

    dataset: str
    split: str
    text: str
    source: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def fingerprint(self) -> dict[str, str]:
        return {
            "dataset": self.dataset,
            "split": self.split,
            "source": self.source,
            "sha256": self.sha256,
        }


def data_dir() -> Path | None:
    value = os.environ.get("MPT_DATA_DIR")
    return Path(value) if value else None


def load_text(dataset: str, split: str = "test") -> Text:
    """The evaluation (or calibration) text of ``dataset``/``split`` as one string."""
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}: choose one of {', '.join(DATASETS)}")
    root = data_dir()
    if root is not None:
        return _load_offline(root, dataset, split)
    return _load_hub(dataset, split)


def _load_offline(root: Path, dataset: str, split: str) -> Text:
    relative = _OFFLINE_FILES.get((dataset, split))
    if relative is None:
        available = ", ".join(f"{d}/{s}" for d, s in _OFFLINE_FILES)
        raise DataError(
            f"{dataset}/{split} has no offline file (MPT_DATA_DIR={root}); offline splits: "
            f"{available}. Unset MPT_DATA_DIR to load it from the hub."
        )
    path = root / relative
    if not path.is_file():
        raise DataError(
            f"{dataset}/{split}: {path} not found. MPT_DATA_DIR={root} must be laid out like "
            f"shared/data (it needs {relative})."
        )
    raw = path.read_text(encoding="utf-8")
    text = " ".join(line.strip() for line in raw.splitlines()) if dataset == "ptb" else raw
    return Text(dataset, split, text, f"file:{relative}")


def _load_hub(dataset: str, split: str) -> Text:
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"{dataset}/{split}: MPT_DATA_DIR is not set and the 'datasets' package is missing; "
            "point MPT_DATA_DIR at a folder laid out like shared/data, or pip install datasets"
        ) from None
    try:
        return _HUB_LOADERS[dataset](datasets, split)
    except Exception as error:  # the hub raises many kinds; all mean "not reachable here"
        raise DataError(
            f"{dataset}/{split} could not be loaded from the hub ({type(error).__name__}); "
            "offline, set MPT_DATA_DIR to a folder laid out like shared/data"
        ) from None


def _hub_wikitext2(datasets, split: str) -> Text:
    rows = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split=split)
    return Text("wikitext2", split, "\n\n".join(rows["text"]), "hub:wikitext-2-raw-v1")


def _hub_ptb(datasets, split: str) -> Text:
    rows = datasets.load_dataset("ptb_text_only", "penn_treebank", split=split)
    return Text("ptb", split, " ".join(rows["sentence"]), "hub:ptb_text_only")


def _hub_c4(datasets, split: str) -> Text:
    shard = "en/c4-validation.00000-of-00008.json.gz"
    rows = datasets.load_dataset("allenai/c4", data_files={split: shard}, split=split)
    return Text("c4", split, " ".join(rows[:C4_EVAL_DOCS]["text"]), f"hub:allenai/c4/{shard}")


_HUB_LOADERS = {"wikitext2": _hub_wikitext2, "ptb": _hub_ptb, "c4": _hub_c4}


def tokenize(tokenizer, text: Text, seqlen: int | None = None) -> torch.Tensor:
    """Token ids of the whole text, shape (1, n); C4 is truncated to 256 windows as GPTQ does."""
    ids = tokenizer(text.text, return_tensors="pt").input_ids
    if text.dataset == "c4" and seqlen is not None:
        ids = ids[:, : C4_EVAL_WINDOWS * seqlen]
    return ids


def calibration_windows(
    ids: torch.Tensor, nsamples: int, seqlen: int, seed: int = 0
) -> torch.Tensor:
    """GPTQ's sampler over a token stream: ``nsamples`` random slices of ``seqlen`` tokens."""
    total = ids.shape[1]
    if total <= seqlen + 1:
        raise DataError(f"calibration text has {total} tokens, too few for seqlen {seqlen}")
    rng = random.Random(seed)
    starts = [rng.randint(0, total - seqlen - 1) for _ in range(nsamples)]
    return torch.cat([ids[:, start : start + seqlen] for start in starts], dim=0)
