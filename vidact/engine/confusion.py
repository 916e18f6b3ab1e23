"""The confusion-matrix picture of an evaluation (`eval/confusion.png`).

Rows are the true classes, columns the predicted ones; each row is normalised to the
share of that class's videos (its recall), so a perfect model is a bright diagonal
whatever the class sizes, and a colour bar gives the scale. Up to `NAMED_CLASSES` classes
are named on both axes (ids alone beyond, where names cannot be read); beside the matrix
a list names the most frequent confusions, which is how a 400-class matrix is read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from vidact.figures import new_figure, save_png

NAMED_CLASSES = 100  # classes named on the axes up to this many
COUNTED_CLASSES = 20  # video counts written in the cells up to this many classes
TOP_CONFUSIONS = 25  # entries of the list beside the matrix
NAME_CHARS = 28  # longer class names are cut to this many characters
LISTING = "top confusions"  # the label of the list's axes


def recall_matrix(confusion: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (rows without videos stay 0)."""
    counts = confusion.sum(axis=1, keepdims=True)
    return np.divide(confusion, counts, out=np.zeros(confusion.shape), where=counts > 0)


def top_confusions(confusion: np.ndarray, count: int = TOP_CONFUSIONS) -> list[tuple[int, int]]:
    """The (true, predicted) off-diagonal cells with the most videos, most first (ties
    in row-major order); cells without videos are left out."""
    off = np.array(confusion, dtype=np.int64)
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:count]
    cells = [divmod(int(i), off.shape[1]) for i in order]
    return [(t, p) for t, p in cells if off[t, p] > 0]


def _short(name: str) -> str:
    return name if len(name) <= NAME_CHARS else name[: NAME_CHARS - 1] + "…"


def confusion_figure(confusion: np.ndarray, class_names: list[str]) -> Figure:
    """The matrix (axes 0), its colour bar, and the top-confusions list (the axes
    labelled LISTING)."""
    confusion = np.asarray(confusion, dtype=np.int64)
    k = len(confusion)
    side = float(np.clip(0.18 * k, 4.0, 18.0))  # inches of the matrix
    figure = new_figure(side + 7.5, side + 2.0)
    grid = figure.add_gridspec(1, 2, width_ratios=[side + 3.0, 4.5])
    matrix: Axes = figure.add_subplot(grid[0, 0])
    listing: Axes = figure.add_subplot(grid[0, 1], label=LISTING)
    recall = recall_matrix(confusion)
    image = matrix.imshow(recall, cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    colour_bar = figure.colorbar(image, ax=matrix, shrink=0.6, aspect=30, pad=0.02)
    colour_bar.set_label("share of the true class's videos (recall)")
    videos = int(confusion.sum())
    top1 = 100.0 * float(np.trace(confusion)) / max(videos, 1)
    matrix.set_title(f"confusion matrix: {videos} videos, {k} classes, top-1 {top1:.1f}%")
    matrix.set_xlabel("predicted class")
    matrix.set_ylabel("true class")
    if k <= NAMED_CLASSES:
        font = float(np.clip(side / k * 72 * 0.75, 5.0, 10.0))
        names = [_short(n) for n in class_names]
        matrix.set_xticks(range(k), names, rotation=90, fontsize=font)
        matrix.set_yticks(range(k), names, fontsize=font)
    if k <= COUNTED_CLASSES:
        for (t, p), value in np.ndenumerate(confusion):
            if value:
                colour = "black" if recall[t, p] > 0.6 else "white"
                matrix.text(p, t, str(value), ha="center", va="center", color=colour, fontsize=8)
    # Two 8-point text lines (about 10 points high each) per entry, as many as fit.
    fitting = int((side + 2.0) * 72 / 20) - 3
    _draw_listing(listing, confusion, class_names, min(TOP_CONFUSIONS, fitting))
    return figure


def _draw_listing(axes: Axes, confusion: np.ndarray, class_names: list[str], count: int) -> None:
    """The top confusions as text lines: "true -> predicted: videos (share of true)"."""
    axes.set_axis_off()
    recall = recall_matrix(confusion)
    lines = [
        f"{i + 1:2d}. {_short(class_names[t])}\n    -> {_short(class_names[p])}: "
        f"{confusion[t, p]} ({100.0 * recall[t, p]:.0f}%)"
        for i, (t, p) in enumerate(top_confusions(confusion, count))
    ]
    body = "\n".join(lines) if lines else "none: every video is on the diagonal"
    axes.set_title("most frequent confusions\n(true -> predicted: videos, share)", fontsize=10)
    axes.text(0.0, 1.0, body, va="top", ha="left", family="monospace", fontsize=8)


def write_confusion_png(path: str | Path, confusion: np.ndarray, class_names: list[str]) -> Path:
    """Draw `confusion_figure` into `path` (atomically)."""
    return save_png(confusion_figure(confusion, class_names), path)
