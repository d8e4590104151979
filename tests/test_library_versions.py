"""A record names the library and version that did each stage's work (issue #6): the
regression suite guards library updates, so a changed number must be traceable to one."""

from importlib.metadata import version

import pytest

from mpt_core.pipeline import resolved_settings
from mpt_core.quant.backends import library_version
from mpt_core.spec import Spec


def stage_settings(text: str) -> list[dict]:
    return resolved_settings(Spec.parse(text))


def test_in_tree_stages_name_no_library():
    settings = stage_settings("rtn:4[group=64]+gptq:4[group=64]")
    assert all("library" not in stage for stage in settings)


def test_gguf_stage_records_llama_cpp_python():
    pytest.importorskip("llama_cpp", reason="llama.cpp's quantizer: bash scripts/setup_gguf.sh")
    settings = stage_settings("magnitude:0.5+gguf:Q4_K_M")
    assert "library" not in settings[0]
    assert settings[1]["library"] == f"llama-cpp-python {version('llama-cpp-python')}"


def test_backend_option_records_that_library():
    pytest.importorskip("bitsandbytes")
    (settings,) = stage_settings("nf4[backend=bitsandbytes]")
    assert settings["library"] == f"bitsandbytes {version('bitsandbytes')}"


def fake_venv(root, library: str, dist: str, release: str) -> None:
    venv = root / f".venv-{library}"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch()
    info = venv / "lib" / "python3.11" / "site-packages" / f"{dist}-{release}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {release}\n")


def test_venv_backend_version_is_read_from_its_own_venv(tmp_path, monkeypatch):
    fake_venv(tmp_path, "gptqmodel", "GPTQModel", "9.1.2")
    monkeypatch.setenv("MPT_BACKEND_VENVS", str(tmp_path))
    assert library_version("gptqmodel") == "gptqmodel 9.1.2"
    (settings,) = stage_settings("gptq:4[group=64,backend=gptqmodel]")
    assert settings["library"] == "gptqmodel 9.1.2"


def test_missing_venv_backend_is_unknown_not_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MPT_BACKEND_VENVS", str(tmp_path))
    assert library_version("llmcompressor") == "llmcompressor unknown"


def test_records_and_mpt_version_name_every_installed_library(capsys):
    from mpt_core.cli import main
    from mpt_core.records import library_versions

    versions = library_versions()
    assert {"torch", "transformers", "tokenizers", "mpt-core"} <= set(versions)
    if __import__("importlib").util.find_spec("llama_cpp"):
        assert versions["llama-cpp-python"] == version("llama-cpp-python")
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("mpt ") and f"torch {versions['torch']}" in out
