"""write_figures: every figure the inputs support, as PNG and SVG."""

from __future__ import annotations

from pathlib import Path

from mpt_core.reporting.plots import write_figures

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "curves"


def test_write_figures_makes_family_and_combined_figures(tmp_path) -> None:
    paths = write_figures([FIXTURES / "synthetic.csv", FIXTURES / "grid.csv"], tmp_path / "figs")
    names = {p.name for p in paths}
    assert {"ptp_synthetic.png", "ptp_synthetic.svg"} <= names
    assert {"combined_grid.png", "combined_grid.svg"} <= names
    for path in paths:
        assert path.is_file() and path.stat().st_size > 5000
        head = path.read_bytes()[:8]
        assert head.startswith(b"\x89PNG") if path.suffix == ".png" else b"<?xml" in head
