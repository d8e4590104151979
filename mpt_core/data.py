"""Evaluation and calibration text: WikiText-2 (raw), PTB, C4.

Offline, files come from ``$MPT_DATA_DIR`` laid out like ``shared/data``
(``wikitext-2-raw/wiki.test.raw``, ``ptb/ptb.{test,valid}.txt``,
``c4/c4-train.00000-of-01024.json.gz``); without it they come from the hub through
``datasets``. Evaluation text follows the GPTQ/Wanda protocol: hub WikiText-2 rows joined
with "\\n\\n" (the offline ``wiki.test.raw`` is that text already, used as-is); PTB
sentences stripped and joined with " "; C4 validation as GPTQ's ``get_c4_new``.
Calibration windows follow the reference samplers, under ``random.seed(seed)``: from
WikiText-2 and PTB a random slice of seqlen tokens of the whole text (``calibration_windows``);
from C4 a random document of the en train shard 0 longer than seqlen tokens, then a random
slice of it (``document_windows``), so a window never crosses documents.
"""

from __future__ import annotations

import gzip
import hashlib
import json
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
# Calibration sets drawn document by document (the reference get_c4); the others are one text.
DOCUMENT_SETS = ("c4",)
C4_TRAIN_SHARD = "c4-train.00000-of-01024.json.gz"  # the en train shard 0 of allenai/c4
_OFFLINE_DOCUMENTS = {("c4", "train"): f"c4/{C4_TRAIN_SHARD}"}


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
    if (dataset, split) in _OFFLINE_DOCUMENTS:
        raise DataError(f"{dataset}/{split} is read document by document: load_documents")
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
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DataError(
            f"{path}: not UTF-8 text (byte {error.start}: {error.reason}); "
            f"restore the file from {dataset}'s source"
        ) from None
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


@dataclass(frozen=True)
class Documents:
    """A data split as its documents, in file order, with where they came from."""

    dataset: str
    split: str
    texts: list[str]
    source: str


def load_documents(dataset: str, split: str = "train") -> Documents:
    """The documents calibration windows are drawn from (C4: the en train shard 0).

    Offline the file must be under ``$MPT_DATA_DIR``: a missing file is a DataError naming
    it, never a fall back to another set."""
    relative = _OFFLINE_DOCUMENTS.get((dataset, split))
    if relative is None:
        sets = ", ".join(f"{d}/{s}" for d, s in _OFFLINE_DOCUMENTS)
        raise DataError(f"{dataset}/{split} is not read as documents; document sets: {sets}")
    root = data_dir()
    if root is None:
        return _hub_documents(dataset, split)
    path = root / relative
    if not path.is_file():
        raise DataError(
            f"{dataset}/{split}: {path} not found. MPT_DATA_DIR={root} must hold {relative} "
            "(allenai/c4 en/c4-train.00000-of-01024.json.gz): C4 calibration reads no other file"
        )
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        texts = [json.loads(line)["text"] for line in lines if line.strip()]
    return Documents(dataset, split, texts, f"file:{relative}")


def _hub_documents(dataset: str, split: str) -> Documents:
    shard = f"en/{C4_TRAIN_SHARD}"
    try:
        import datasets

        rows = datasets.load_dataset("allenai/c4", data_files={split: shard}, split=split)
    except Exception as error:  # ImportError or any hub failure: not reachable here
        raise DataError(
            f"{dataset}/{split}: allenai/c4 {shard} could not be loaded from the hub "
            f"({type(error).__name__}); offline, put it at $MPT_DATA_DIR/c4/{C4_TRAIN_SHARD}"
        ) from None
    return Documents(dataset, split, list(rows["text"]), f"hub:allenai/c4/{shard}")


def document_windows(
    tokenizer, documents: list[str], nsamples: int, seqlen: int, seed: int = 0
) -> torch.Tensor:
    """The reference C4 sampler (Wanda's ``get_c4``): under ``random.seed(seed)``, for each
    window draw a document index with ``randint(0, len - 1)`` until its token count is more
    than ``seqlen``, then a start with ``randint(0, n_tokens - seqlen - 1)``. GPTQ's and
    SparseGPT's ``get_c4`` stop at ``>= seqlen`` and draw the same windows, except that a
    document of exactly ``seqlen`` tokens makes their second ``randint`` fail."""
    rng = random.Random(seed)  # the same draws as random.seed(seed) and random.randint
    windows = []
    for _ in range(nsamples):
        ids = _long_document(tokenizer, documents, seqlen, rng)
        start = rng.randint(0, ids.shape[1] - seqlen - 1)
        windows.append(ids[:, start : start + seqlen])
    return torch.cat(windows, dim=0)


# Where no document is long enough the reference loops forever; mpt stops after this many
# short documents in a row and says so. If a fraction p of the documents is long enough, a
# run reaches the bound with probability (1 - p) ** 10_000: below 5e-5 for any p of 0.1% or more.
MAX_SHORT_DRAWS = 10_000


def _long_document(tokenizer, documents: list[str], seqlen: int, rng) -> torch.Tensor:
    for _ in range(MAX_SHORT_DRAWS):
        index = rng.randint(0, len(documents) - 1)
        ids = tokenizer(documents[index], return_tensors="pt").input_ids
        if ids.shape[1] > seqlen:
            return ids
    raise DataError(
        f"{MAX_SHORT_DRAWS} documents drawn in a row had at most {seqlen} tokens: "
        "the calibration documents are too short for this seqlen"
    )


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
