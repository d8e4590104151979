"""Progress bars for long loops (an evaluation's windows, a sweep's points), drawn only
where someone watches.

Whoever runs the work decides whether and where bars are drawn: an ``mpt`` command
installs ``shown(sys.stderr)``, the pytest harness a stream past its output capture. The
work itself only opens ``bar(total, ...)`` and calls the ``advance(n)`` it yields once per
batch; with no stream installed, or one that is not a terminal, ``advance`` is a function
that does nothing and nothing is written (no per-window cost: the evaluation's speed is
benchmarked against a bare forward loop).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TextIO, TypeVar

from tqdm import tqdm

T = TypeVar("T")
_stream: TextIO | None = None  # where bars go now; None: nowhere


@contextmanager
def shown(stream: TextIO | None, enabled: bool = True) -> Iterator[None]:
    """Bars opened inside go to ``stream`` when it is a terminal and ``enabled``."""
    global _stream
    previous = _stream
    watched = enabled and stream is not None and _is_terminal(stream)
    _stream = stream if watched else None
    try:
        yield
    finally:
        _stream = previous


def _is_terminal(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _ignore(count: int = 1) -> None:
    """``advance`` where no bar is drawn."""


@contextmanager
def bar(total: int, desc: str, unit: str = "window") -> Iterator[Callable[[int], object]]:
    """A bar of ``total`` steps; yields ``advance(n)``. Cleared when done (leave=False):
    what stays on the terminal is the command's own output."""
    if _stream is None:
        yield _ignore
        return
    drawn = tqdm(total=total, desc=desc, unit=unit, file=_stream, leave=False, dynamic_ncols=True)
    try:
        yield drawn.update
        drawn.refresh()  # the last count, even when the final updates came faster than redraws
    finally:
        drawn.close()


def each(items: Sequence[T], desc: str, unit: str = "point") -> Iterator[T]:
    """``items`` one by one under a bar that advances as each is done."""
    with bar(len(items), desc, unit) as advance:
        for item in items:
            yield item
            advance(1)


def write(line: str) -> None:
    """Print ``line`` to stdout above any bar (the bar is drawn again below it)."""
    tqdm.write(line)
