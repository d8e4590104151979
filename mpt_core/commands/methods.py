"""``mpt methods``: every method the registry knows, as a markdown table (the README's list).

One row per ``mpt_core.registry`` method: its family, the levels a spec may give it,
its options with their defaults (the calibration options ``calib``/``nsamples``/``seed``
folded into one column), the library that does the work, and the paper, taken from the
first paragraph of the method module's docstring.
"""

from __future__ import annotations

import argparse
import re
import sys

from mpt_core import registry

LEVELS = {"ratio": "ratio", "nm": "N:M", "bits": "bits", "scheme": "SCHEME", "none": "none"}
CALIBRATION = ("calib", "nsamples", "seed")


DEFAULT_IN_HELP = re.compile(r"\(default: (?P<default>[^)]+)\)")


def _option(key: str, option: registry.Option) -> str:
    """``key=default``; an option without a fixed default is shown with what its help says."""
    value = option.default
    if value is None:
        said = DEFAULT_IN_HELP.search(option.help or "")
        return f"`{key}` ({said.group('default')})" if said else f"`{key}` (unset)"
    if isinstance(value, bool):
        value = "true" if value else "false"
    return f"`{key}={value}`"


def _levels(method: registry.Method) -> str:
    order = list(LEVELS)
    kinds = sorted(method.levels, key=lambda kind: order.index(kind) if kind in order else 99)
    return ", ".join(LEVELS.get(kind, kind) for kind in kinds)


def _options(method: registry.Method) -> str:
    shown = [
        _option(key, option)
        for key, option in method.options.items()
        if not (method.needs_calibration and key in CALIBRATION)
    ]
    return " ".join(shown) or "-"


def _calibration(method: registry.Method) -> str:
    if not method.needs_calibration:
        return "no"
    windows = method.options["nsamples"].default if "nsamples" in method.options else None
    return f"{windows} windows" if windows else "yes"


def _library(method: registry.Method) -> str:
    where = method.library or "in-tree"
    if "backend" in method.options:
        try:
            from mpt_core.quant import backends

            alternatives = [
                name
                for name in backends.BACKENDS.get(method.name, ())
                if name not in getattr(backends, "DEAD", {})
            ]
        except (ImportError, AttributeError):
            alternatives = []
        if alternatives:
            where += "; `backend=` " + ", ".join(alternatives)
    return where


def _paper(method: registry.Method) -> str:
    doc = sys.modules[method.apply.__module__].__doc__ or ""
    paragraph = doc.strip().split("\n\n")[0]
    return " ".join(paragraph.split()).replace("|", "\\|") or "-"


def table() -> str:
    header = (
        "| method | family | levels | options (defaults) | calibration (`nsamples`) | library "
        "| paper |"
    )
    lines = [header, "|---|---|---|---|---|---|---|"]
    for name in registry.names():
        method = registry.get(name)
        cells = (
            f"`{name}`",
            method.family,
            _levels(method),
            _options(method),
            _calibration(method),
            _library(method),
            _paper(method),
        )
        lines.append("| " + " | ".join(cells) + " |")
    count = len(lines) - 2
    lines.append("")
    lines.append(
        f"{count} methods. A pruning method given an N:M level counts as semi-structured; "
        "a calibrated method also takes `calib` (the calibration data), `nsamples` and `seed`."
    )
    return "\n".join(lines)


def register(subparsers) -> None:
    parser = subparsers.add_parser("methods", help="the registered methods, levels and options")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print(table())
    return 0
