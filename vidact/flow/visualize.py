"""Flow -> colour image (Middlebury colour wheel), and side-by-side panels.

The colour coding is the one of Baker et al., "A Database and Evaluation Methodology for
Optical Flow" (IJCV 2011): hue = direction, saturation = magnitude relative to the
largest one shown; a 55-colour wheel built from six ramps (red-yellow 15, yellow-green 6,
green-cyan 4, cyan-blue 11, blue-magenta 13, magenta-red 6), interpolated linearly.
Zero flow is white; with the Middlebury angle atan2(-v, -u), motion to the right (+x) is
red, down (+y) orange-yellow, left cyan-blue and up blue-violet.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import torch

__all__ = ["color_wheel", "flow_to_color", "make_panel"]

# (length, start colour, end colour) of each ramp of the wheel, in RGB.
_RAMPS: tuple[tuple[int, tuple[int, int, int], tuple[int, int, int]], ...] = (
    (15, (255, 0, 0), (255, 255, 0)),  # red -> yellow
    (6, (255, 255, 0), (0, 255, 0)),  # yellow -> green
    (4, (0, 255, 0), (0, 255, 255)),  # green -> cyan
    (11, (0, 255, 255), (0, 0, 255)),  # cyan -> blue
    (13, (0, 0, 255), (255, 0, 255)),  # blue -> magenta
    (6, (255, 0, 255), (255, 0, 0)),  # magenta -> red
)


def color_wheel() -> np.ndarray:
    """The (55, 3) float wheel, RGB in [0, 255]; entry k is at angle 2*pi*k/55."""
    rows = []
    for n, start, end in _RAMPS:
        t = np.arange(n, dtype=np.float64)[:, None] / n
        rows.append(np.asarray(start, np.float64) * (1 - t) + np.asarray(end, np.float64) * t)
    return np.concatenate(rows, axis=0)


def flow_to_color(flow: Any, max_flow: float | None = None) -> np.ndarray:
    """(H, W, 2) flow in pixels (x, y) -> (H, W, 3) uint8 RGB image.

    max_flow: the magnitude shown fully saturated (default: the largest magnitude in
    `flow`). Larger vectors are drawn at full saturation and darkened to 75 %, as in the
    Middlebury reference code. Non-finite vectors are black.
    """
    if isinstance(flow, torch.Tensor):
        flow = flow.detach().cpu().numpy()
    f = np.asarray(flow, dtype=np.float64)
    if f.ndim != 3 or f.shape[-1] != 2:
        raise ValueError(f"expected an (H, W, 2) flow, got shape {f.shape}")
    bad = ~np.isfinite(f).all(axis=-1)
    u = np.where(bad, 0.0, f[..., 0])
    v = np.where(bad, 0.0, f[..., 1])
    mag = np.sqrt(u * u + v * v)
    scale = float(mag.max()) if max_flow is None else float(max_flow)
    if scale <= 0:
        scale = 1.0
    rad = mag / scale

    wheel = color_wheel()
    ncols = wheel.shape[0]
    angle = np.arctan2(-v, -u) / np.pi  # in [-1, 1]
    pos = (angle + 1.0) / 2.0 * (ncols - 1)  # fractional index into the wheel
    k0 = np.floor(pos).astype(np.int64)
    k1 = (k0 + 1) % ncols
    frac = (pos - k0)[..., None]
    col = ((1 - frac) * wheel[k0] + frac * wheel[k1]) / 255.0  # (H, W, 3) in [0, 1]

    inside = (rad <= 1.0)[..., None]
    r = rad[..., None]
    col = np.where(inside, 1.0 - r * (1.0 - col), col * 0.75)
    img = np.clip(np.floor(255.0 * col), 0, 255).astype(np.uint8)
    img[bad] = 0
    return img


def make_panel(
    images: Sequence[np.ndarray],
    titles: Sequence[str] | None = None,
    *,
    height: int | None = None,
    gap: int = 4,
    title_height: int = 22,
    background: tuple[int, int, int] = (255, 255, 255),
) -> np.ndarray:
    """Lay (H, W, 3) uint8 RGB images side by side, each under its title.

    Images are resized to a common height (`height`, default the tallest), keeping their
    aspect ratio; grayscale (H, W) images are accepted. Returns one uint8 RGB image.
    """
    if not images:
        raise ValueError("make_panel needs at least one image")
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"{len(images)} images but {len(titles)} titles")
    tiles = []
    for img in images:
        a = np.asarray(img)
        if a.ndim == 2:
            a = np.repeat(a[..., None], 3, axis=-1)
        if a.ndim != 3 or a.shape[-1] != 3:
            raise ValueError(f"panel images must be (H, W, 3) or (H, W), got {a.shape}")
        tiles.append(np.ascontiguousarray(a, dtype=np.uint8))
    target_h = height or max(t.shape[0] for t in tiles)
    resized: list[np.ndarray] = []
    for t in tiles:
        if t.shape[0] != target_h:
            new_w = max(1, round(t.shape[1] * target_h / t.shape[0]))
            resized.append(cv2.resize(t, (new_w, target_h), interpolation=cv2.INTER_AREA))
        else:
            resized.append(t)

    band = title_height if titles is not None else 0
    total_w = sum(t.shape[1] for t in resized) + gap * (len(resized) - 1)
    panel = np.empty((band + target_h, total_w, 3), dtype=np.uint8)
    panel[:] = np.asarray(background, dtype=np.uint8)
    x = 0
    for i, t in enumerate(resized):
        panel[band:, x : x + t.shape[1]] = t
        if titles is not None:
            _put_title(panel, titles[i], x, t.shape[1], band)
        x += t.shape[1] + gap
    return panel


def _put_title(panel: np.ndarray, text: str, x: int, width: int, band: int) -> None:
    """Draw `text` centred in the band above the tile at column x, shrinking to fit."""
    font = cv2.FONT_HERSHEY_SIMPLEX
    scale = band / 40.0
    (tw, th), _ = cv2.getTextSize(text, font, scale, 1)
    if tw > width - 4 and tw > 0:
        scale *= (width - 4) / tw
        (tw, th), _ = cv2.getTextSize(text, font, scale, 1)
    org = (x + max(0, (width - tw) // 2), max(th, (band + th) // 2))
    cv2.putText(panel, text, org, font, scale, (0, 0, 0), 1, cv2.LINE_AA)
