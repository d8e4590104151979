"""What every figure shares: tick labels as plain decimals, a style per legend entry that
no other entry shares, the legend beside the axes.

matplotlib labels a log axis ``2.62×10²`` and may move a linear axis's digits into an
offset (``+2.6e2``); a PPL reads as ``262``. Its default colour cycle repeats after ten
lines, so a history of sixteen points had legend entries nobody could tell apart.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import LogFormatter, ScalarFormatter  # noqa: E402

# tab10: ten colours told apart by most readers (tab20 pairs a light and dark of each hue);
# past ten entries the line style changes, past forty the marker.
COLOURS = plt.cm.tab10.colors
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


@dataclass(frozen=True)
class Style:
    colour: tuple[float, float, float]
    linestyle: str
    marker: str


def styles() -> Iterator[Style]:
    """Styles no two of which are alike, for up to 320 entries (then they repeat)."""
    per_marker = len(COLOURS) * len(LINESTYLES)
    index = 0
    while True:
        yield Style(
            COLOURS[index % len(COLOURS)],
            LINESTYLES[(index // len(COLOURS)) % len(LINESTYLES)],
            MARKERS[(index // per_marker) % len(MARKERS)],
        )
        index += 1


def plain_number(value: float) -> str:
    """``262``, ``26.2``, ``260.75``, ``0.05``, ``12,000``: never a power of ten. Up to six
    significant digits: the ticks of a narrow log axis step by a quarter (``260.75``), and
    tick arithmetic leaves ``0.30000000000000004``."""
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return np.format_float_positional(value, precision=6, unique=True, fractional=False, trim="-")


class PlainLogFormatter(LogFormatter):
    """matplotlib's choice of which log ticks to label, each label a plain decimal."""

    def __call__(self, x, pos=None) -> str:
        return plain_number(x) if super().__call__(x, pos) else ""


def plain_ticks(ax: plt.Axes) -> None:
    """Both axes' tick labels as plain decimals: no ``×10`` and no offset text."""
    for axis in (ax.xaxis, ax.yaxis):
        if axis.get_scale() == "log":
            axis.set_major_formatter(PlainLogFormatter(labelOnlyBase=False))
            axis.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False))
        elif isinstance(axis.get_major_formatter(), ScalarFormatter):
            axis.get_major_formatter().set_useOffset(False)
            axis.get_major_formatter().set_scientific(False)


def legend_beside(ax: plt.Axes, fontsize: int = 7) -> None:
    """The legend to the right of the axes, where it hides no line."""
    ax.legend(fontsize=fontsize, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
