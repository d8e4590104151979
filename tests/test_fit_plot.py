"""``mpt fit --plot FILE``: every fitted curve drawn (points, fit, s0 with its interval,
the study's range when ``--band`` gives it) to a file of the suffix's format; a file or
band that cannot be drawn is refused in one line before any fit."""

from __future__ import annotations

from pathlib import Path

import pytest

from mpt_core.analysis.curves import group_curves, read_points
from mpt_core.cli import main
from mpt_core.commands import fit
from mpt_core.commands.fit import fit_curve
from mpt_core.reporting.plots import plot_fits

REPO = Path(__file__).resolve().parent.parent
TINY_UNSTRUCTURED = REPO / "baselines" / "cpu" / "tiny-llama" / "unstructured.csv"
SYNTHETIC = REPO / "fixtures" / "curves" / "synthetic.csv"
SIGNATURES = {".png": b"\x89PNG\r\n\x1a\n", ".svg": b"<?xml", ".pdf": b"%PDF"}


def test_plot_of_a_committed_baseline_is_a_png(tmp_path, capsys):
    out = tmp_path / "x.png"
    assert main(["fit", str(TINY_UNSTRUCTURED), "--plot", str(out)]) == 0
    assert "magnitude" in capsys.readouterr().out  # the table is still printed
    data = out.read_bytes()
    assert data.startswith(SIGNATURES[".png"]) and len(data) > 10_000


@pytest.mark.parametrize("suffix", [".svg", ".pdf"])
def test_the_suffix_picks_the_format(tmp_path, suffix):
    out = tmp_path / f"x{suffix}"
    assert main(["fit", str(SYNTHETIC), "--plot", str(out), "--band", "0.45:0.55"]) == 0
    assert out.read_bytes().startswith(SIGNATURES[suffix])


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--plot", "{tmp}/x.jpg"], "--plot {tmp}/x.jpg: name a .png, .svg, .pdf file"),
        (["--plot", "{tmp}/no/x.png"], "folder {tmp}/no does not exist"),
        (["--band", "0.5:0.6"], "--band is drawn on the --plot figure"),
        (["--plot", "{tmp}/x.png", "--band", "0.6"], "--band 0.6: write LOW:HIGH"),
        (["--plot", "{tmp}/x.png", "--band", "0.6:0.5"], "need 0 <= LOW < HIGH <= 1"),
    ],
)
def test_what_cannot_be_drawn_is_refused_before_fitting(tmp_path, capsys, monkeypatch, argv, said):
    monkeypatch.setattr(fit, "ptp_rows", lambda args: pytest.fail("fitted before refusing"))
    argv = [part.format(tmp=tmp_path) for part in argv]
    assert main(["fit", str(SYNTHETIC), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and said.format(tmp=tmp_path) in err
    assert list(tmp_path.iterdir()) == []


def test_each_panel_shows_the_interval_and_the_band():
    curves = group_curves(read_points(SYNTHETIC), axes=("ratio",))
    rows = [fit_curve(curve, "up") for curve in curves]
    fits = [(row.curve, row.fit) for row in rows if row.fit]
    figure = plot_fits(fits, band=(0.45, 0.55))
    panels = [ax for ax in figure.axes if ax.get_visible()]
    assert len(panels) == len(fits) == 2
    for ax, (curve, result) in zip(panels, fits, strict=True):
        spans = sorted((p.get_x(), p.get_x() + p.get_width(), p.get_hatch()) for p in ax.patches)
        assert spans == sorted([(result.s0_low, result.s0_high, None), (0.45, 0.55, "//")]), spans
        assert curve.key.model in ax.get_title() and curve.key.label in ax.get_title()
        assert curve.key.dataset in ax.get_title()
    figure.canvas.draw()
    ticks = [t.get_text() for ax in panels for t in ax.get_yticklabels() + ax.get_xticklabels()]
    assert ticks and not [t for t in ticks if "times" in t or "×" in t or "e+" in t]
