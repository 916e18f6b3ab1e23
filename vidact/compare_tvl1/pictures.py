"""compare-tvl1's pictures, drawn with matplotlib: ``panel.png`` for one pair of a video
and ``clip.gif`` over all its pairs.

Each picture is a 2 x 3 grid of tiles, like the rep-flow paper's Figures 1 and 5 side by
side: the RGB frame | TV-L1 | rep-flow on top; ground truth (or, without it, the next RGB
frame) | flow-of-flow | the colour key below. Flows are in the Middlebury colour coding
(vidact/flow/visualize.py); the key is that coding drawn over a disc of flow vectors,
its axes in pixels: the colour of a vector is the colour at its tip, fully saturated at
the tile's scale (written in each title) and darker beyond it. TV-L1, rep-flow and
ground truth share one scale, set by the references (99th percentile of the TV-L1 and
ground-truth magnitudes); flow-of-flow has its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from PIL import Image

from vidact.atomic import atomic_path
from vidact.compare_tvl1.measure import Computed
from vidact.errors import VidactError
from vidact.figures import figure_rgb, new_figure, save_png
from vidact.flow.visualize import flow_to_color, wheel_image

PANEL_TILE_INCHES = 4.0  # panel.png: tiles 400 px wide
GIF_TILE_INCHES = 2.0  # clip.gif: tiles 200 px wide (31 such frames: a few MB at most)
GIF_FRAME_MS = 250
_GREY = 0.82  # an empty tile (a pair without flow-of-flow)


def _scale(*flows: np.ndarray) -> float:
    """Shared colour scale: the largest 99th-percentile magnitude among `flows`."""
    best = 0.0
    for f in flows:
        if f.size:
            best = max(best, float(np.percentile(np.sqrt(np.square(f).sum(-1)), 99)))
    return best if best > 0 else 1.0


@dataclass
class _Shown:
    """What one picture shows: the tiles' images (None: a grey tile) and titles."""

    rgb: np.ndarray
    tvl1: np.ndarray
    rep: np.ndarray
    below: np.ndarray  # ground truth (a flow) or the next RGB frame
    below_is_flow: bool
    fof: np.ndarray | None
    title: str


class _Picture:
    """The 2 x 3 figure; `show` redraws its tiles for another pair (the GIF's frames)."""

    def __init__(self, height: int, width: int, tile: float, scales: tuple[float, float]):
        self.scale, self.fof_scale = scales
        self.figure = new_figure(3 * tile, 2 * tile * height / width + 1.2)
        grid = self.figure.subplots(2, 3, squeeze=False)
        self.axes: list[Axes] = list(grid.ravel())
        blank = np.zeros((height, width, 3), np.uint8)
        self.images: list[AxesImage] = []
        for ax in self.axes[:5]:
            self.images.append(ax.imshow(blank, interpolation="nearest"))
            ax.set_axis_off()
        self._draw_key(self.axes[5])

    def _draw_key(self, ax: Axes) -> None:
        """The colour wheel over flow vectors of up to the scale (axes in px)."""
        s = self.scale
        ax.imshow(wheel_image(), extent=(-s, s, s, -s), interpolation="bilinear")
        ax.set_xlabel("u, x motion (px)")
        ax.set_ylabel("v, y motion (px; + is down)")
        ax.set_title(f"colour key: full at {s:.2f} px\n(flow-of-flow: at {self.fof_scale:.3g})")
        ax.set_aspect("equal")

    def show(self, shown: _Shown, rep_name: str) -> None:
        tiles: list[tuple[np.ndarray | None, str]] = [
            (shown.rgb, shown.title),
            (flow_to_color(shown.tvl1, max_flow=self.scale), "TV-L1"),
            (flow_to_color(shown.rep, max_flow=self.scale), rep_name),
            (
                flow_to_color(shown.below, max_flow=self.scale)
                if shown.below_is_flow
                else shown.below,
                "ground truth" if shown.below_is_flow else "RGB, next frame",
            ),
            (
                None if shown.fof is None else flow_to_color(shown.fof, max_flow=self.fof_scale),
                "flow-of-flow" if shown.fof is not None else "flow-of-flow: none (last pair)",
            ),
        ]
        for image, ax, (data, title) in zip(self.images, self.axes[:5], tiles, strict=True):
            grey = np.full_like(shown.rgb, round(255 * _GREY))
            image.set_data(grey if data is None else data)
            ax.set_title(title)


def _shown(c: Computed, t: int, gt: np.ndarray | None) -> _Shown:
    fof = c.fof[t] if t < c.fof.shape[0] else None
    below = gt if gt is not None else c.frames[t + 1]
    return _Shown(c.frames[t], c.tvl1[t], c.rep[t], below, gt is not None, fof, f"RGB, pair {t}")


def _default_pair(pairs: int, gt: tuple[list[int], np.ndarray] | None) -> int:
    """The middle ground-truth pair if any, else the middle pair; one with a flow-of-flow."""
    candidates = gt[0] if gt is not None else list(range(pairs))
    with_fof = [p for p in candidates if p < pairs - 1] or candidates
    return with_fof[len(with_fof) // 2]


def _gt_of(c: Computed, pair: int) -> np.ndarray | None:
    if c.gt is not None and pair in c.gt[0]:
        return c.gt[1][c.gt[0].index(pair)]
    return None


def _write_gif(c: Computed, out: Path, rep_name: str, scales: tuple[float, float]) -> None:
    """Every pair of the video (the next RGB frame below, never ground truth) in one
    figure redrawn per frame, one scale for the whole clip."""
    h, w = c.frames.shape[1:3]
    picture = _Picture(h, w, GIF_TILE_INCHES, scales)
    images = []
    for t in range(c.rep.shape[0]):
        picture.show(_shown(c, t, None), rep_name)
        images.append(Image.fromarray(figure_rgb(picture.figure)))
    with atomic_path(out / "clip.gif") as tmp:
        images[0].save(
            tmp, format="GIF", save_all=True, append_images=images[1:],
            duration=GIF_FRAME_MS, loop=0,
        )  # fmt: skip


def panel_figure(c: Computed, pair: int | None, iterations: int) -> tuple[Figure, dict[str, Any]]:
    """panel.png's figure for `pair` (default: `_default_pair`) and what it shows."""
    pairs = c.rep.shape[0]
    if pair is None:
        pair = _default_pair(pairs, c.gt)
    elif not 0 <= pair < pairs:
        raise VidactError(
            f"--pair {pair}: {c.item.path} has pairs 0..{pairs - 1} in the frames read"
        )
    rep_name = f"rep-flow ({iterations} it.)"
    gt_flow = _gt_of(c, pair)
    shown = _shown(c, pair, gt_flow)
    # One colour scale for every flow of the panel, set by the references (TV-L1, ground
    # truth): rep-flow vectors beyond it are drawn saturated and darkened.
    scale = _scale(c.tvl1[pair], *([] if gt_flow is None else [gt_flow]))
    fof_scale = _scale(shown.fof) if shown.fof is not None else 1.0
    h, w = c.frames.shape[1:3]
    picture = _Picture(h, w, PANEL_TILE_INCHES, (scale, fof_scale))
    picture.show(shown, rep_name)
    return picture.figure, {
        "video": str(c.item.path),
        "pair": pair,
        "panel_tiles": ["RGB", "TV-L1", "rep-flow", "flow-of-flow"]
        + (["ground truth"] if gt_flow is not None else []),
        "panel_max_flow_px": scale,
        "panel_fof_max": fof_scale,
    }


def write_pictures(c: Computed, out: Path, pair: int | None, iterations: int) -> dict[str, Any]:
    """panel.png and clip.gif in `out`; what they show (report.json's "pictures")."""
    figure, shown = panel_figure(c, pair, iterations)
    save_png(figure, out / "panel.png")
    clip_scales = (_scale(c.tvl1), _scale(c.fof))
    _write_gif(c, out, f"rep-flow ({iterations} it.)", clip_scales)
    return {
        "panel": "panel.png",
        "clip": "clip.gif",
        **shown,
        "clip_max_flow_px": clip_scales[0],
        "clip_fof_max": clip_scales[1],
    }
