"""C4 calibration as the papers draw it (issue #21): documents of the en train shard 0, the
reference sampler's draws under random.seed(0), no window across documents, and a missing
shard is an error naming the file, never another calibration set."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pytest
import torch

from mpt_core import data
from mpt_core.errors import DataError
from mpt_core.pipeline import Calibration

SEQLEN = 16
# token counts of the synthetic documents: several at most SEQLEN (never drawn), one of
# exactly SEQLEN, the rest longer
LENGTHS = [3, 40, 16, 9, 17, 64, 1, 25, 15, 33, 120, 5, 18, 2, 50]


class WordIds:
    """A tokenizer for the synthetic shard: each word is its integer id."""

    def __call__(self, text: str, return_tensors: str = "pt"):
        ids = torch.tensor([[int(word) for word in text.split()]], dtype=torch.long)
        return type("Encoding", (), {"input_ids": ids})()


def _document(index: int, length: int) -> str:
    """Token t of document d is d * 1000 + t: a window names its document and positions."""
    return " ".join(str(index * 1000 + position) for position in range(length))


def _write_shard(root: Path, lengths: list[int]) -> Path:
    """root/c4/c4-train.00000-of-01024.json.gz, JSON lines like the real shard."""
    path = root / "c4" / data.C4_TRAIN_SHARD
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as out:
        for index, length in enumerate(lengths):
            record = {"text": _document(index, length), "timestamp": "2019", "url": "u"}
            out.write(json.dumps(record) + "\n")
    return path


@pytest.fixture
def shard(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MPT_DATA_DIR", str(tmp_path))
    return _write_shard(tmp_path, LENGTHS)


def reference_get_c4(path: Path, tokenizer, nsamples: int, seed: int, longer) -> list:
    """The reference get_c4 transcribed (Wanda lib/data.py; SparseGPT/GPTQ datautils.py
    with ``longer`` = ``>=``), reading the shard as json lines instead of through datasets."""
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        traindata = [json.loads(line) for line in lines]
    random.seed(seed)
    trainloader = []
    for _ in range(nsamples):
        while True:
            i = random.randint(0, len(traindata) - 1)
            trainenc = tokenizer(traindata[i]["text"], return_tensors="pt")
            if longer(trainenc.input_ids.shape[1], SEQLEN):
                break
        i = random.randint(0, trainenc.input_ids.shape[1] - SEQLEN - 1)
        j = i + SEQLEN
        trainloader.append(trainenc.input_ids[:, i:j])
    return trainloader


def test_the_draws_are_the_reference_samplers(shard):
    documents = data.load_documents("c4", "train")
    assert documents.texts == [_document(i, n) for i, n in enumerate(LENGTHS)]
    windows = data.document_windows(WordIds(), documents.texts, 64, SEQLEN, seed=0)
    expected = reference_get_c4(shard, WordIds(), 64, 0, lambda n, seqlen: n > seqlen)
    assert torch.equal(windows, torch.cat(expected))


def at_least(n: int, seqlen: int) -> bool:
    return n >= seqlen


def test_gptqs_at_least_seqlen_draws_the_same_but_fails_on_a_document_of_seqlen(
    shard, tmp_path, monkeypatch
):
    """GPTQ/SparseGPT stop at >= seqlen: the same draws as long as no document has exactly
    seqlen tokens; drawing one, their randint(0, -1) raises where Wanda's > skips it."""
    with pytest.raises(ValueError, match="empty range"):
        reference_get_c4(shard, WordIds(), 64, 0, at_least)
    other = tmp_path / "no-exact"
    path = _write_shard(other, [n for n in LENGTHS if n != SEQLEN])
    monkeypatch.setenv("MPT_DATA_DIR", str(other))
    texts = data.load_documents("c4", "train").texts
    windows = data.document_windows(WordIds(), texts, 64, SEQLEN, seed=0)
    assert torch.equal(windows, torch.cat(reference_get_c4(path, WordIds(), 64, 0, at_least)))


def test_every_window_lies_inside_one_document_longer_than_seqlen(shard):
    texts = data.load_documents("c4", "train").texts
    windows = data.document_windows(WordIds(), texts, 200, SEQLEN, seed=3)
    assert windows.shape == (200, SEQLEN)
    drawn = set()
    for window in windows.tolist():
        document = {token // 1000 for token in window}
        assert len(document) == 1
        (index,) = document
        positions = [token % 1000 for token in window]
        assert positions == list(range(positions[0], positions[0] + SEQLEN))
        assert LENGTHS[index] > SEQLEN
        drawn.add(index)
    assert drawn == {i for i, n in enumerate(LENGTHS) if n > SEQLEN}


def test_calibration_on_c4_draws_from_the_train_documents(shard):
    settings = {"calib": "c4", "nsamples": 8, "seed": 0}
    windows = Calibration(WordIds(), SEQLEN).windows(settings)
    texts = data.load_documents("c4", "train").texts
    assert torch.equal(windows, data.document_windows(WordIds(), texts, 8, SEQLEN, 0))


def test_a_missing_shard_is_an_error_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("MPT_DATA_DIR", str(tmp_path))
    expected = str(tmp_path / "c4" / data.C4_TRAIN_SHARD)
    with pytest.raises(DataError, match="not found") as error:
        Calibration(WordIds(), SEQLEN).windows({"calib": "c4", "nsamples": 2, "seed": 0})
    assert expected in str(error.value) and "\n" not in str(error.value)


def test_c4_train_is_never_read_as_one_text():
    with pytest.raises(DataError, match="document by document"):
        data.load_text("c4", "train")


def test_documents_all_too_short_stop_with_an_error():
    with pytest.raises(DataError, match=f"at most {SEQLEN} tokens"):
        data.document_windows(WordIds(), [_document(0, SEQLEN)], 1, SEQLEN, seed=0)
