"""Pictures drawn with matplotlib, headless, and saved atomically.

Every picture vidact writes (confusion matrix, training curves, run reports, flow panels)
is a `matplotlib.figure.Figure` on the Agg canvas, built without pyplot: nothing needs a
display, no global figure list grows over a long run, and a figure is freed with its last
reference. This module holds the three steps they share: a new figure, a PNG written
atomically, and a figure rendered to an RGB array (the frames of a GIF).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vidact.atomic import atomic_path

DPI = 100  # pixels per inch of every saved picture


def new_figure(width: float, height: float) -> Figure:
    """A figure of `width` x `height` inches on the Agg canvas, laid out by matplotlib's
    constrained layout (titles, labels and colour bars never overlap)."""
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_png(figure: Figure, path: str | Path) -> Path:
    """Write `figure` to `path` as a PNG, atomically (a reader never sees half a file)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=DPI, facecolor="white")
    return path


def figure_rgb(figure: Figure) -> np.ndarray:
    """The figure rendered at its own size as an (H, W, 3) uint8 RGB array."""
    canvas = figure.canvas
    assert isinstance(canvas, FigureCanvasAgg)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
