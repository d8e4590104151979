"""gptqmodel as mpt's GPTQ backend, run for real from .venv-gptqmodel on tiny-llama.

Given mpt's options, gptqmodel's GPTQ must pick the integers the in-tree GPTQ picks (its
values differ only by its fp16 scales), and the footprint must be gptqmodel's checkpoint
layout, counted here from the format. Tests that run the library skip, naming the setup
command, where the venv is absent; CI creates it (``.ci/run``, ``tox -e backend-gptqmodel``).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from mpt_core.data import load_text
from mpt_core.engine.layerwise import block_linear_names
from mpt_core.errors import BackendError, SpecError
from mpt_core.evaluate.perplexity import perplexity
from mpt_core.models import load_model
from mpt_core.pipeline import Calibration, compress
from mpt_core.quant.backends.venv import venv_python
from mpt_core.snapshot import Snapshot
from mpt_core.spec import Spec
from mpt_core.storage import Footprint

SPEC = "gptq:4[group=32,nsamples=16]"
LIBRARY_SPEC = "gptq:4[backend=gptqmodel,group=32,nsamples=16]"
SEQLEN = 64


@dataclass
class Run:
    dense: dict[str, torch.Tensor]
    in_tree: dict[str, torch.Tensor]
    library: dict[str, torch.Tensor]
    in_tree_ppl: float
    library_ppl: float
    footprint: Footprint
    model: torch.nn.Module


def linear_weights(model) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    return {name: state[name].clone() for name in block_linear_names(model)}


def evaluation_ids(tokenizer) -> torch.Tensor:
    """The start of WikiText-2 test: offline from MPT_DATA_DIR, else from the hub."""
    return tokenizer(load_text("wikitext2").text[:40_000], return_tensors="pt").input_ids


@pytest.fixture(scope="module")
def run() -> Run:
    try:
        venv_python("gptqmodel")
    except SpecError as error:
        pytest.skip(str(error))
    tiny = load_model("tiny-llama", device="cpu")
    calibration = Calibration(tiny.tokenizer, SEQLEN)
    ids = evaluation_ids(tiny.tokenizer)
    dense = linear_weights(tiny.model)
    snapshot = Snapshot(tiny.model)
    compress(tiny.model, Spec.parse(SPEC), calibration)
    in_tree = linear_weights(tiny.model)
    in_tree_ppl = perplexity(tiny.model, ids, SEQLEN, windows=8).ppl
    snapshot.restore(tiny.model)
    footprint = compress(tiny.model, Spec.parse(LIBRARY_SPEC), calibration)
    library_ppl = perplexity(tiny.model, ids, SEQLEN, windows=8).ppl
    return Run(
        dense, in_tree, linear_weights(tiny.model), in_tree_ppl, library_ppl, footprint, tiny.model
    )


def test_library_picks_the_in_tree_integers(run):
    # fp16 scales move a value by a small fraction of a step; another integer moves it by a
    # whole step, about 4x the rounding error of the layer as a whole
    for name, in_tree in run.in_tree.items():
        gap = torch.linalg.norm(run.library[name] - in_tree)
        rounding = torch.linalg.norm(in_tree - run.dense[name])
        assert gap < 0.05 * rounding, name


def test_perplexity_matches_the_in_tree_gptq(run):
    assert run.library_ppl == pytest.approx(run.in_tree_ppl, rel=0.01)


def test_footprint_is_the_gptq_checkpoint_layout(run):
    # qweight: 4 bits per weight; per group of 32 an fp16 scale and a 4-bit zero (qzeros);
    # g_idx: an int32 per input column, which gptqmodel stores even without act_order
    expected = 0
    for name in block_linear_names(run.model):
        rows, columns = run.model.get_parameter(name).shape
        groups = rows * columns // 32
        expected += rows * columns * 4 + groups * (16 + 4) + columns * 32
    assert run.footprint.compressed_bits == expected


def test_missing_venv_is_one_clear_line(fresh_tiny, monkeypatch, tmp_path):
    monkeypatch.setenv("MPT_BACKEND_VENVS", str(tmp_path))
    with pytest.raises(SpecError) as error:
        compress(fresh_tiny.model, Spec.parse(LIBRARY_SPEC), Calibration(fresh_tiny.tokenizer, 32))
    assert "scripts/setup_backend_venv.sh gptqmodel" in str(error.value)
    assert "\n" not in str(error.value)


def test_library_failure_is_one_line_with_its_last_word(fresh_tiny, monkeypatch, tmp_path):
    python = tmp_path / ".venv-gptqmodel" / "bin" / "python"
    python.parent.mkdir(parents=True)
    # a stand-in for the venv's python: a library that logs, then fails
    python.write_text("#!/bin/sh\necho loading\necho 'ValueError: group 128 too big'\nexit 3\n")
    python.chmod(0o755)
    monkeypatch.setenv("MPT_BACKEND_VENVS", str(tmp_path))
    monkeypatch.setenv("MPT_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(BackendError) as error:
        compress(fresh_tiny.model, Spec.parse(LIBRARY_SPEC), Calibration(fresh_tiny.tokenizer, 32))
    message = str(error.value)
    assert "backend gptqmodel failed (exit 3): ValueError: group 128 too big" in message
    assert "\n" not in message
    assert (tmp_path / "cache" / "gptqmodel-runner.log").read_text().startswith("loading")
