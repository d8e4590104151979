"""Progress bars: drawn on a terminal, silent elsewhere, off on request (issue #23)."""

from __future__ import annotations

import io
from contextlib import contextmanager
from types import SimpleNamespace

import pytest

from conftest import needs_data
from mpt_core import cli, progress
from mpt_core.evaluate.perplexity import llama_perplexity, perplexity
from mpt_core.harness.terminal_progress import TerminalStream, terminal_stream

SEQLEN = 64


class FakeTerminal(io.StringIO):
    """A stream that says it is a terminal, so that bars are drawn into it."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def ids(wikitext_ids):
    return wikitext_ids[:, : SEQLEN * 10 + 5]  # 10 windows, a ragged tail


def test_a_stream_that_is_not_a_terminal_gets_nothing(tiny, ids):
    stream = io.StringIO()
    with progress.shown(stream):
        perplexity(tiny.model, ids, SEQLEN, batch_size=3)
    assert stream.getvalue() == ""


def test_the_bar_advances_to_the_window_count_on_a_terminal(tiny, ids):
    stream = FakeTerminal()
    with progress.shown(stream):
        result = perplexity(tiny.model, ids, SEQLEN, batch_size=3)
    assert result.windows == 10
    assert "perplexity" in stream.getvalue()
    assert "10/10" in stream.getvalue()
    assert "11/10" not in stream.getvalue()


def test_llama_perplexity_draws_its_chunks(tiny, ids):
    stream = FakeTerminal()
    with progress.shown(stream):
        llama_perplexity(tiny.model, ids, SEQLEN, bos_id=None, chunks=4, batch_size=3)
    assert "llama-perplexity" in stream.getvalue() and "4/4" in stream.getvalue()


def test_nothing_is_drawn_where_no_stream_is_installed_or_it_is_turned_off(tiny, ids):
    stream = FakeTerminal()
    with progress.shown(stream, enabled=False):
        perplexity(tiny.model, ids, SEQLEN, windows=2)
    perplexity(tiny.model, ids, SEQLEN, windows=2)  # none installed
    assert stream.getvalue() == ""


def test_each_advances_once_per_item_even_past_a_continue():
    stream = FakeTerminal()
    with progress.shown(stream):
        seen = [item for item in progress.each(["a", "b", "c"], "points") if item != "b"]
    assert seen == ["a", "c"]
    assert "3/3" in stream.getvalue()


CLI_ARGS = ["--model", "tiny-llama", "--seqlen", "64", "--windows", "3"]


@pytest.mark.parametrize(
    ("terminal", "flag", "hub_bars"),
    [(True, [], True), (True, ["--no-progress"], False), (False, [], False)],
)
def test_the_hubs_own_bars_follow_ours(monkeypatch, terminal, flag, hub_bars):
    """transformers' "Loading weights" bar is the hub's tqdm: off where ours are off."""
    import huggingface_hub.utils

    turned_off = []
    monkeypatch.setattr(
        huggingface_hub.utils, "disable_progress_bars", lambda: turned_off.append(1)
    )
    monkeypatch.setattr("sys.stderr", FakeTerminal() if terminal else io.StringIO())
    monkeypatch.setattr(cli, "build_parser", lambda: _parser_returning(flag))
    assert cli.main([]) == 0
    assert (not turned_off) is hub_bars


def _parser_returning(flag):
    class Parser:
        def parse_args(self, _argv):
            return SimpleNamespace(no_progress=bool(flag), func=lambda _args: 0)

    return Parser()


@needs_data
@pytest.mark.parametrize("flag, drawn", [([], True), (["--no-progress"], False)])
def test_mpt_run_draws_on_a_terminal_stderr_unless_no_progress(monkeypatch, capsys, flag, drawn):
    terminal = FakeTerminal()
    monkeypatch.setattr("sys.stderr", terminal)
    assert cli.main(["run", *CLI_ARGS, "--spec", "magnitude:0.5", *flag]) == 0
    assert ("3/3" in terminal.getvalue()) is drawn
    assert "PPL" in capsys.readouterr().out  # the record's line still goes to stdout


@needs_data
def test_mpt_sweep_draws_its_points_and_their_windows(monkeypatch, tmp_path, capsys):
    terminal = FakeTerminal()
    monkeypatch.setattr("sys.stderr", terminal)
    out = tmp_path / "sweep.jsonl"
    args = ["sweep", *CLI_ARGS, "--method", "magnitude", "--ratios", "0.3,0.5", "--out", str(out)]
    assert cli.main(args) == 0
    drawn = terminal.getvalue()
    assert "sweep magnitude" in drawn and "2/2" in drawn and "point" in drawn
    assert "perplexity" in drawn and "3/3" in drawn
    assert capsys.readouterr().out.count("PPL") == 2


class FakeCapture:
    def __init__(self):
        self.suspended = False

    @contextmanager
    def global_and_fixture_disabled(self):
        self.suspended = True
        yield
        self.suspended = False


class FakeWriter:
    def __init__(self, line: str):
        self.width_of_current_line = len(line)
        self.raw: list[str] = []
        self.lines = 0
        self.capture: FakeCapture | None = None

    def line(self):
        self.lines += 1
        self.width_of_current_line = 0

    def write_raw(self, text, flush=False):
        assert self.capture.suspended, "a bar written while pytest captures is lost"
        self.raw.append(text)


def fake_reporter(line: str = "", fspath=None):
    writer = FakeWriter(line)
    config = SimpleNamespace(get_terminal_writer=lambda: writer)
    reporter = SimpleNamespace(config=config, currentfspath=fspath, isatty=lambda: True)
    reporter.ensure_newline = lambda: setattr(reporter, "currentfspath", None)
    return reporter, writer


def test_the_pytest_stream_writes_past_capture_on_a_line_of_its_own():
    reporter, writer = fake_reporter(line="...")  # -q's dots on the current line
    writer.capture = FakeCapture()
    stream = TerminalStream(reporter, writer.capture)
    stream.write("\rperplexity 1/4")
    stream.write("\rperplexity 2/4")
    assert writer.raw == ["\rperplexity 1/4", "\rperplexity 2/4"]
    assert writer.lines == 1  # one newline before the bar, not one per redraw
    assert stream.isatty()


def test_the_pytest_stream_begins_the_tests_line_again_after_the_bar():
    reporter, writer = fake_reporter(fspath="benchmarks/test_quant.py")
    writer.capture = FakeCapture()
    TerminalStream(reporter, writer.capture).write("\rperplexity 1/4")
    assert reporter.currentfspath is None  # pytest writes the file (or -v's test id) again


def plugin_config(no_progress: bool):
    reporter, writer = fake_reporter()
    plugins = {"terminalreporter": reporter, "capturemanager": FakeCapture()}
    return SimpleNamespace(
        getoption=lambda name: {"--mpt-no-progress": no_progress}[name],
        pluginmanager=SimpleNamespace(get_plugin=plugins.get),
    )


def test_mpt_no_progress_turns_the_pytest_bars_off():
    assert terminal_stream(plugin_config(no_progress=False)) is not None
    assert terminal_stream(plugin_config(no_progress=True)) is None


def test_mpt_no_progress_is_an_option_of_the_plugin(request):
    assert request.config.getoption("--mpt-no-progress") is False  # registered, off by default
