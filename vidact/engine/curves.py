"""`curves.png` in a run folder: how training went, redrawn after every epoch.

Three panels from the run's metrics.jsonl lines, against epochs (bottom axis) and
optimiser steps (top axis): train and validation loss; train and validation top-1;
the learning rate at the end of each epoch. `draw_curves` also draws the runs of
`vidact report` (engine/compare_runs.py) into the same three panels, one colour a run.
A picture is a convenience: `update_curves` logs a warning instead of stopping a run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure, SubFigure
from matplotlib.ticker import MaxNLocator

from vidact import console
from vidact.figures import new_figure, save_png

CURVES = "curves.png"
PANELS = (  # (title, y label, ((metrics.jsonl key, line style, legend word), ...))
    ("loss", "cross-entropy", (("train_loss", "--", "train"), ("val_loss", "-", "val"))),
    ("top-1", "accuracy (%)", (("train_top1", "--", "train"), ("val_top1", "-", "val"))),
    ("learning rate", "lr (end of epoch)", (("lr", "-", "lr"),)),
)


def curve(history: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(epochs, values) of the lines of `history` that hold `key` (validation may skip
    epochs: train.val_every)."""
    points = [(float(m["epoch"]), float(m[key])) for m in history if m.get(key) is not None]
    return [e for e, _ in points], [v for _, v in points]


def add_panels(parent: Figure | SubFigure) -> list[Axes]:
    """The three empty panels of PANELS, side by side in `parent`."""
    axes = list(parent.subplots(1, len(PANELS), squeeze=False)[0])
    for ax, (title, ylabel, _) in zip(axes, PANELS, strict=True):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return axes


def draw_curves(
    axes: Sequence[Axes], history: Sequence[dict[str, Any]], colour: str, label: str = ""
) -> None:
    """Draw one run's metrics into the panels of `add_panels`."""
    for ax, (_, _, lines) in zip(axes, PANELS, strict=True):
        for key, style, word in lines:
            epochs, values = curve(history, key)
            if epochs:
                name = f"{label} {word}".strip()
                ax.plot(epochs, values, style, marker="o", markersize=3, color=colour, label=name)


def finish_panels(axes: Sequence[Axes], histories: Sequence[Sequence[dict[str, Any]]]) -> None:
    """Legends, and a log scale for the learning rate when every value is positive."""
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    rates = [v for history in histories for v in curve(history, "lr")[1]]
    axes[-1].set_yscale("log" if rates and min(rates) > 0 else "linear")


def add_step_axis(ax: Axes, history: Sequence[dict[str, Any]]) -> None:
    """Optimiser steps on the top axis (every epoch has the same number of steps)."""
    last = history[-1]
    per_epoch = float(last.get("step", 0)) / max(float(last["epoch"]), 1.0)
    if per_epoch > 0:
        top = ax.secondary_xaxis(
            "top",
            functions=(
                lambda e: np.multiply(e, per_epoch),
                lambda s: np.divide(s, per_epoch),
            ),
        )
        top.set_xlabel("optimiser step")


def curves_figure(history: Sequence[dict[str, Any]], title: str = "") -> Figure:
    """The run's three panels (see the module docstring)."""
    figure = new_figure(15.0, 4.2)
    axes = add_panels(figure)
    draw_curves(axes, history, "tab:blue")
    for ax in axes:
        add_step_axis(ax, history)
    finish_panels(axes, [history])
    if title:
        figure.suptitle(title)
    return figure


def write_curves(run_dir: Path, history: Sequence[dict[str, Any]], title: str = "") -> Path:
    """Draw `curves_figure` into <run_dir>/curves.png (atomically)."""
    return save_png(curves_figure(history, title), Path(run_dir) / CURVES)


def update_curves(run_dir: Path, history: Sequence[dict[str, Any]], title: str = "") -> None:
    """`write_curves` for the trainer's end of epoch: a failure is a warning, never the
    end of the run."""
    try:
        write_curves(run_dir, history, title)
    except Exception as exc:  # any drawing error: the run goes on
        console.warn(f"could not draw {Path(run_dir) / CURVES} ({exc}); training goes on")
