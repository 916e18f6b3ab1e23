"""compare-tvl1's pictures: ``panel.png`` (RGB | TV-L1 | rep-flow | flow-of-flow
[| ground truth]) for one pair of a video, and ``clip.gif`` over all its pairs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vidact.atomic import atomic_path
from vidact.compare_tvl1.measure import Computed
from vidact.errors import VidactError
from vidact.flow.visualize import flow_to_color, make_panel

TILE_HEIGHT = (192, 360)  # picture tiles are scaled to this height range
GIF_FRAME_MS = 250


def _scale(*flows: np.ndarray) -> float:
    """Shared colour scale: the largest 99th-percentile magnitude among `flows`."""
    best = 0.0
    for f in flows:
        if f.size:
            best = max(best, float(np.percentile(np.sqrt(np.square(f).sum(-1)), 99)))
    return best if best > 0 else 1.0


def _tile_height(height: int) -> int:
    return int(min(max(height, TILE_HEIGHT[0]), TILE_HEIGHT[1]))


def _blank(height: int, width: int) -> np.ndarray:
    return np.full((height, width, 3), 210, np.uint8)


def _panel(
    rgb: np.ndarray,
    tiles: Sequence[tuple[str, np.ndarray | None, float]],
    title: str,
) -> np.ndarray:
    """RGB then one colour-coded tile per (title, flow or None for a grey tile, scale)."""
    h, w = rgb.shape[:2]
    images = [rgb]
    titles = [title]
    for name, flow, scale in tiles:
        images.append(_blank(h, w) if flow is None else flow_to_color(flow, max_flow=scale))
        titles.append(name)
    return make_panel(images, titles, height=_tile_height(h))


def _default_pair(pairs: int, gt: tuple[list[int], np.ndarray] | None) -> int:
    """The middle ground-truth pair if any, else the middle pair; one with a flow-of-flow."""
    candidates = gt[0] if gt is not None else list(range(pairs))
    with_fof = [p for p in candidates if p < pairs - 1] or candidates
    return with_fof[len(with_fof) // 2]


def write_pictures(c: Computed, out: Path, pair: int | None, iterations: int) -> dict[str, Any]:
    pairs = c.rep.shape[0]
    if pair is None:
        pair = _default_pair(pairs, c.gt)
    elif not 0 <= pair < pairs:
        raise VidactError(
            f"--pair {pair}: {c.item.path} has pairs 0..{pairs - 1} in the frames read"
        )
    rep_name = f"rep-flow ({iterations} it.)"
    gt_flow = None
    if c.gt is not None and pair in c.gt[0]:
        gt_flow = c.gt[1][c.gt[0].index(pair)]
    fof = c.fof[pair] if pair < c.fof.shape[0] else None
    # One colour scale for every flow of the panel, set by the references (TV-L1, ground
    # truth): rep-flow vectors beyond it are drawn saturated and darkened.
    scale = _scale(c.tvl1[pair], *([] if gt_flow is None else [gt_flow]))
    fof_scale = _scale(fof) if fof is not None else 1.0
    tiles: list[tuple[str, np.ndarray | None, float]] = [
        ("TV-L1", c.tvl1[pair], scale),
        (rep_name, c.rep[pair], scale),
        ("flow-of-flow", fof, fof_scale),
    ]
    if gt_flow is not None:
        tiles.append(("ground truth", gt_flow, scale))
    panel = _panel(c.frames[pair], tiles, f"RGB, pair {pair}")
    with atomic_path(out / "panel.png") as tmp:
        Image.fromarray(panel).save(tmp, format="PNG")

    clip_scale = _scale(c.tvl1)
    clip_fof_scale = _scale(c.fof)
    images = []
    for t in range(pairs):
        tiles = [
            ("TV-L1", c.tvl1[t], clip_scale),
            (rep_name, c.rep[t], clip_scale),
            ("flow-of-flow", c.fof[t] if t < c.fof.shape[0] else None, clip_fof_scale),
        ]
        images.append(Image.fromarray(_panel(c.frames[t], tiles, f"RGB {t}")))
    with atomic_path(out / "clip.gif") as tmp:
        images[0].save(
            tmp,
            format="GIF",
            save_all=True,
            append_images=images[1:],
            duration=GIF_FRAME_MS,
            loop=0,
        )
    return {
        "panel": "panel.png",
        "clip": "clip.gif",
        "video": str(c.item.path),
        "pair": pair,
        "panel_tiles": ["RGB", "TV-L1", "rep-flow", "flow-of-flow"]
        + (["ground truth"] if gt_flow is not None else []),
        "panel_max_flow_px": scale,
        "panel_fof_max": fof_scale,
        "clip_max_flow_px": clip_scale,
        "clip_fof_max": clip_fof_scale,
    }
