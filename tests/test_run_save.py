"""``mpt run --save DIR``: the compressed model reloads with transformers and scores the
same; a folder that cannot take it, or a model whose layers transformers cannot rebuild,
is refused in one line, and DIR is never left half written. A spec ending with gguf also
writes llama.cpp's quantized file, which llama.cpp loads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import needs_data
from mpt_core.commands import save_model
from mpt_core.commands.save_model import architecture_change, save_compressed
from mpt_core.errors import MptError
from mpt_core.quant.gguf import SETUP_HINT, quantizer_missing

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
    readable = 0o666 & ~save_model.current_umask()
    assert {file.stat().st_mode & 0o777 for file in target.iterdir()} == {readable}


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


needs_quantizer = pytest.mark.skipif(quantizer_missing() is not None, reason=SETUP_HINT)


@needs_data
@needs_quantizer
@pytest.mark.parametrize(
    ("spec", "scheme"), [("gguf:Q8_0", "Q8_0"), ("wanda:0.5+gguf:4", "Q4_K_M")]
)
def test_a_gguf_spec_also_writes_the_file_llama_cpp_quantized(cli, tmp_path, spec, scheme):
    """The file holds the saved model: reading it into a fresh tiny-llama gives exactly the
    saved checkpoint. Q4_K_M on tiny-llama's 64-wide rows holds no Q4_K tensor (llama.cpp
    falls back where rows are not multiples of 256); its file type says the scheme."""
    import gguf
    from transformers import AutoModelForCausalLM

    from mpt_core.models import tiny_llama
    from mpt_core.quant import gguf as gguf_method

    saved = tmp_path / "tiny-gguf"
    result = cli("run", *ARGS, "--spec", spec, "--save", str(saved))
    assert result.returncode == 0, result.stderr[-2000:]
    path = saved / f"model-{scheme}.gguf"
    assert sorted(p.name for p in saved.iterdir() if p.suffix == ".gguf") == [path.name]
    assert [p.name for p in tmp_path.iterdir()] == ["tiny-gguf"]  # no staging folder left
    reader = gguf.GGUFReader(path)
    assert reader.fields["general.file_type"].contents() == gguf_method.SCHEMES[scheme]
    if scheme == "Q8_0":
        assert "Q8_0" in gguf_method.mixture(path)
    model, _ = tiny_llama()
    gguf_method.load_quantized(model, path)
    checkpoint = AutoModelForCausalLM.from_pretrained(saved).state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, checkpoint[name]), name


@needs_data
@needs_quantizer
def test_a_spec_that_does_not_end_with_gguf_writes_no_gguf_file(cli, tmp_path):
    """After a later stage the quantized file no longer holds the model."""
    saved = tmp_path / "tiny"
    result = cli("run", *ARGS, "--spec", "gguf:Q8_0+magnitude:0.5", "--save", str(saved))
    assert result.returncode == 0, result.stderr[-2000:]
    assert (saved / "model.safetensors").is_file()
    assert not list(saved.glob("*.gguf")) and [p.name for p in tmp_path.iterdir()] == ["tiny"]


# llama.cpp runs in a process of its own: a native crash (llama-cpp-python has segfaulted
# freeing a model) fails this test instead of ending the whole session, and os._exit skips
# the destructors once the logits are out
LLAMA_CPP_LOGITS = """
import json, os, sys
import llama_cpp
path, ids = sys.argv[1], json.loads(sys.argv[2])
llama = llama_cpp.Llama(model_path=path, n_ctx=64, logits_all=True, verbose=False)
llama.eval(ids)
print(json.dumps(llama.scores[: len(ids)].tolist()), flush=True)
os._exit(0)
"""


def llama_cpp_logits(path: Path, ids: list[int]) -> list[list[float]]:
    """The logits llama.cpp computes for ``ids`` with the GGUF file at ``path``."""
    command = [sys.executable, "-c", LLAMA_CPP_LOGITS, str(path), json.dumps(ids)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"llama.cpp exited {result.returncode}: {result.stderr[-2000:]}"
    return json.loads(result.stdout)


@needs_data
@needs_quantizer
def test_llama_cpp_loads_the_saved_gguf_and_computes_the_saved_models_logits(cli, tmp_path):
    """On a tiny LLaMA with a trained byte-level BPE: tiny-llama's byte tokenizer has no
    merges, and llama.cpp refuses a BPE vocabulary without them ('cannot find tokenizer
    merges in model file'), though the quantizer never reads the vocabulary."""
    pytest.importorskip("llama_cpp")
    from test_gguf_architectures import llama3
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model, tokenizer = llama3(tmp_path)
    model.save_pretrained(tmp_path / "bpe-llama")
    tokenizer.save_pretrained(tmp_path / "bpe-llama")
    saved = tmp_path / "saved"
    args = ["--model", str(tmp_path / "bpe-llama"), *ARGS[2:], "--spec", "gguf:Q8_0"]
    result = cli("run", *args, "--save", str(saved))
    assert result.returncode == 0, result.stderr[-2000:]
    ids = list(range(5, 37))
    ours = torch.tensor(llama_cpp_logits(saved / "model-Q8_0.gguf", ids))
    with torch.no_grad():
        theirs = AutoModelForCausalLM.from_pretrained(saved)(torch.tensor([ids])).logits[0]
    # llama.cpp multiplies Q8_0 weights by activations it rounds to Q8_0 too: measured 0.7%
    # of the largest logit apart (0.0049 of 0.68, this test's model); the bound allows ~3x
    assert (ours - theirs).abs().max() <= 0.02 * theirs.abs().max()
