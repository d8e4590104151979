"""``mpt run --save DIR``: the compressed model reloads with transformers and scores the
same; a folder that cannot take it, or a model whose layers transformers cannot rebuild,
is refused in one line, and DIR is never left half written."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import needs_data
from mpt_core.commands import save_model
from mpt_core.commands.save_model import architecture_change, save_compressed
from mpt_core.errors import MptError

ARGS = ["--model", "tiny-llama", "--dataset", "wikitext2", "--seqlen", "64", "--windows", "2"]


@needs_data
def test_saved_model_reloads_with_transformers_and_gives_the_same_ppl(cli, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mpt_core.data import load_text, tokenize
    from mpt_core.evaluate.perplexity import perplexity

    saved = tmp_path / "tiny-magnitude"
    result = cli("run", *ARGS, "--spec", "magnitude:0.5", "--json", "--save", str(saved))
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads(result.stdout)
    model = AutoModelForCausalLM.from_pretrained(saved)
    tokenizer = AutoTokenizer.from_pretrained(saved)
    assert model.model.layers[0].mlp.up_proj.weight.eq(0).float().mean() == 0.5  # pruned
    ids = tokenize(tokenizer, load_text("wikitext2", "test"), 64)
    reloaded = perplexity(model, ids, 64, 2)
    assert reloaded.ppl == pytest.approx(record["value"], rel=1e-6)
    assert [p.name for p in tmp_path.iterdir()] == ["tiny-magnitude"]  # no partial folder left


def test_a_non_empty_folder_is_refused_before_the_model_loads(cli, tmp_path):
    (tmp_path / "taken.txt").write_text("mine")
    # a model that does not exist: had it loaded first, the error would name the model
    result = cli(
        "run", "--model", str(tmp_path / "no-model"), "--spec", "dense", "--save", str(tmp_path)
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "--save" in result.stderr and "not empty" in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["taken.txt"]


@pytest.mark.parametrize(
    ("setup", "said"),
    [("file", "is a file"), ("no-parent", "does not exist")],
)
def test_save_folders_that_cannot_take_a_model_are_refused(tmp_path, setup, said):
    target = tmp_path / "model"
    if setup == "file":
        target.write_text("")
    else:
        target = tmp_path / "missing" / "model"
    with pytest.raises(MptError, match=said):
        save_model.check_save_dir(str(target))


def test_an_empty_folder_is_filled(fresh_tiny, tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    save_model.check_save_dir(str(target))
    save_compressed(fresh_tiny.model, fresh_tiny.tokenizer, str(target), "dense")
    assert (target / "model.safetensors").is_file() and (target / "config.json").is_file()
    assert json.loads((target / "config.json").read_text())["use_cache"] is True
    assert fresh_tiny.model.config.use_cache is False  # mpt's own scoring keeps it off


def test_a_failed_write_leaves_no_folder_behind(fresh_tiny, tmp_path, monkeypatch):
    def half_write(model, tokenizer, folder):
        (folder / "model.safetensors").write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(save_model, "write_checkpoint", half_write)
    with pytest.raises(MptError, match="No space left"):
        save_compressed(fresh_tiny.model, fresh_tiny.tokenizer, str(tmp_path / "m"), "dense")
    assert list(tmp_path.iterdir()) == []


def test_an_unchanged_architecture_passes(fresh_tiny):
    assert architecture_change(fresh_tiny.model) is None


def test_a_factorized_layer_is_an_architecture_change(fresh_tiny):
    from mpt_core.engine.modules import replace_module
    from mpt_core.lowrank.factorized import LowRankLinear

    linear = fresh_tiny.model.model.layers[1].mlp.up_proj
    u, vt = torch.zeros(linear.out_features, 4), torch.zeros(4, linear.in_features)
    replace_module(fresh_tiny.model, "model.layers.1.mlp.up_proj", LowRankLinear(u, vt, None))
    assert "model.layers.1.mlp.up_proj is a LowRankLinear" in architecture_change(fresh_tiny.model)


def test_an_added_bias_is_an_architecture_change(fresh_tiny):
    """FLAP adds a bias to o_proj that a LLaMA config does not build: it would be dropped."""
    o_proj = fresh_tiny.model.model.layers[0].self_attn.o_proj
    o_proj.bias = torch.nn.Parameter(torch.zeros(o_proj.out_features))
    assert "o_proj.bias" in architecture_change(fresh_tiny.model)


def test_a_narrower_layer_is_an_architecture_change(fresh_tiny):
    mlp = fresh_tiny.model.model.layers[0].mlp
    mlp.up_proj.weight = torch.nn.Parameter(mlp.up_proj.weight[:64].clone())
    assert "has shape (64, 64)" in architecture_change(fresh_tiny.model)


@needs_data
def test_a_structural_method_is_refused_without_writing(cli, tmp_path):
    target = tmp_path / "svd"
    result = cli("run", *ARGS, "--spec", "svd:0.5", "--save", str(target))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "svd:0.5" in result.stderr and "LowRankLinear" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_forward_hook_is_an_architecture_change(fresh_tiny):
    """A hook is code, not a tensor: the saved model would run without it."""
    fresh_tiny.model.model.norm.register_forward_hook(lambda _m, _a, out: out * 2)
    assert "model.norm carries a forward hook" in architecture_change(fresh_tiny.model)
