"""llmcompressor as mpt's GPTQ and AWQ backend, run for real from .venv-llmcompressor on
tiny-llama.

llmcompressor's GPTQ finds every group's grid before the sweep, so it must pick the
integers of the in-tree ``gptq`` with ``static_groups``. Its AWQ has no clipping search and
its own scale grid, so it is held to the in-tree AWQ's perplexity and to its grid: at most
2^bits levels per group. The footprint must be compressed-tensors' ``pack-quantized``
layout, counted here from the format. Tests that run the library skip, naming the setup
command, where the venv is absent; CI creates it (``.ci/run``, ``tox -e backend-llmcompressor``).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from mpt_core.data import load_text
from mpt_core.engine.layerwise import block_linear_names
from mpt_core.errors import SpecError
from mpt_core.evaluate.perplexity import perplexity
from mpt_core.models import load_model
from mpt_core.pipeline import Calibration, compress
from mpt_core.quant.backends.venv import venv_python
from mpt_core.spec import Spec
from mpt_core.storage import Footprint

GROUP = 32
SEQLEN = 64
OPTIONS = f"group={GROUP},nsamples=16"


@dataclass
class Run:
    in_tree: dict[str, torch.Tensor]
    library: dict[str, torch.Tensor]
    dense: dict[str, torch.Tensor]
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


def side_by_side(spec: str) -> Run:
    """``spec`` in-tree and through llmcompressor, each on a fresh tiny-llama."""
    try:
        venv_python("llmcompressor")
    except SpecError as error:
        pytest.skip(str(error))
    runs = []
    for backend in ("mpt", "llmcompressor"):
        tiny = load_model("tiny-llama", device="cpu")
        ids = evaluation_ids(tiny.tokenizer)
        dense = linear_weights(tiny.model)
        stage = spec.replace("[", f"[backend={backend},")
        footprint = compress(tiny.model, Spec.parse(stage), Calibration(tiny.tokenizer, SEQLEN))
        ppl = perplexity(tiny.model, ids, SEQLEN, windows=8).ppl
        runs.append((linear_weights(tiny.model), ppl, footprint, tiny.model))
    (in_tree, in_tree_ppl, _, _), (library, library_ppl, footprint, model) = runs
    return Run(in_tree, library, dense, in_tree_ppl, library_ppl, footprint, model)


@pytest.fixture(scope="module")
def gptq() -> Run:
    return side_by_side(f"gptq:4[{OPTIONS},static_groups]")


@pytest.fixture(scope="module")
def awq() -> Run:
    return side_by_side(f"awq:4[{OPTIONS}]")


def test_gptq_picks_the_in_tree_static_group_integers(gptq):
    for name, in_tree in gptq.in_tree.items():
        gap = torch.linalg.norm(gptq.library[name] - in_tree)
        rounding = torch.linalg.norm(in_tree - gptq.dense[name])
        assert gap < 0.05 * rounding, name


def test_gptq_perplexity_matches_the_in_tree_gptq(gptq):
    assert gptq.library_ppl == pytest.approx(gptq.in_tree_ppl, rel=0.01)


def test_awq_perplexity_is_near_the_in_tree_awq(awq):
    assert awq.library_ppl == pytest.approx(awq.in_tree_ppl, rel=0.02)


def test_awq_weights_lie_on_a_4_bit_grid_per_group(awq):
    for name, weight in awq.library.items():
        groups = weight.reshape(-1, GROUP)
        levels = max(len(torch.unique(group)) for group in groups)
        assert levels <= 2**4, name


def test_footprint_is_the_pack_quantized_layout(gptq):
    # weight_packed: 4 bits per weight; per group of 32 an fp32 scale (the model's dtype)
    # and a 4-bit zero point packed in int32 along the rows; weight_shape: two int64
    expected = 0
    for name in block_linear_names(gptq.model):
        rows, columns = gptq.model.get_parameter(name).shape
        groups = columns // GROUP
        expected += rows * columns * 4 + rows * groups * (32 + 4) + 2 * 64
    assert gptq.footprint.compressed_bits == expected


def test_smoothquant_through_llmcompressor_is_one_clear_line(fresh_tiny):
    try:
        venv_python("llmcompressor")
    except SpecError as error:
        pytest.skip(str(error))
    with pytest.raises(SpecError) as error:
        compress(
            fresh_tiny.model,
            Spec.parse("smoothquant:8[backend=llmcompressor]"),
            Calibration(fresh_tiny.tokenizer, 32),
        )
    assert "backend llmcompressor runs gptq and awq" in str(error.value)
    assert "\n" not in str(error.value)
