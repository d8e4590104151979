"""Where a pytest session draws its measurements' progress bars: on pytest's own terminal,
past its output capture.

pytest captures what a test writes (file descriptors 1 and 2 by default), so a bar written
to stderr during a measurement would show only in a failed test's captured output. The
bar is written instead through pytest's terminal writer with capture suspended for each
write, as pytest's live logging (``log_cli``) does, and on a line of its own: pytest
begins the test's line again after it (as after a live log line), so neither the progress
dots nor ``-v``'s test ids are overwritten. ``-q`` keeps the bar (it is cleared when done);
``--mpt-no-progress`` turns it off. Not drawn when pytest's terminal is not a TTY, nor in an
xdist worker (its output is the controller's, not a terminal).
"""

from __future__ import annotations


class TerminalStream:
    """A file-like stream for tqdm that writes on pytest's terminal, capture suspended."""

    def __init__(self, reporter, capture):
        self._reporter = reporter
        self._writer = reporter.config.get_terminal_writer()
        self._capture = capture

    def isatty(self) -> bool:
        return bool(self._reporter.isatty())

    def write(self, text: str) -> None:
        with self._capture.global_and_fixture_disabled():
            self._reporter.ensure_newline()  # the file's dots or -v's test id
            if self._writer.width_of_current_line:  # -q's dots: no file name to begin again
                self._writer.line()
            # raw: the writer's idea of the line stays "empty", which is what the bar
            # leaves behind when it is cleared
            self._writer.write_raw(text, flush=True)

    def flush(self) -> None:
        """Each write is flushed already."""


def terminal_stream(config) -> TerminalStream | None:
    """The stream this session's bars go to; None where none are drawn (``progress.shown``
    also draws none when the stream is not a TTY)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if config.getoption("--mpt-no-progress") or None in (reporter, capture):
        return None
    return TerminalStream(reporter, capture)
