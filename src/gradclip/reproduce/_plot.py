"""Figures of the reproductions: matplotlib's Agg canvas (no pyplot), saved as PNG into the output folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def figure(width: float = 6.4, height: float = 4.0, nrows: int = 1, ncols: int = 1) -> tuple[Any, Any]:
    """A figure and its axes (an array of axes when ``nrows * ncols > 1``), drawn by Agg.

    Raises:
        ConfigError: matplotlib is not installed (names the extra to install).
    """
    from gradclip.report._plots import _mpl

    _mpl()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=True)


def save(fig: Any, out: Path, name: str, dpi: int = 90) -> Path:
    """Write ``fig`` as ``out/name.png`` (tight box) and return the path."""
    path = Path(out) / f"{name}.png"
    fig.savefig(path, format="png", dpi=dpi, bbox_inches="tight")
    return path
