"""Flow -> colour image (Middlebury colour wheel), and the wheel drawn as a colour key.

The colour coding is the one of Baker et al., "A Database and Evaluation Methodology for
Optical Flow" (IJCV 2011): hue = direction, saturation = magnitude relative to the
largest one shown; a 55-colour wheel built from six ramps (red-yellow 15, yellow-green 6,
green-cyan 4, cyan-blue 11, blue-magenta 13, magenta-red 6), interpolated linearly.
Zero flow is white; with the Middlebury angle atan2(-v, -u), motion to the right (+x) is
red, down (+y) orange-yellow, left cyan-blue and up blue-violet.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["color_wheel", "flow_to_color", "wheel_image"]

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


def wheel_image(size: int = 150) -> np.ndarray:
    """The colour key: (size, size, 3) uint8 RGB of `flow_to_color` over the flow vectors
    of the square [-1, 1]^2 (x right, y down), fully saturated on the unit circle,
    white outside it. Drawn with extent (-s, s, s, -s) it is the key of scale s."""
    axis = np.linspace(-1.0, 1.0, size)
    flow = np.stack(np.meshgrid(axis, axis, indexing="xy"), axis=-1)  # (y, x, (u, v))
    image = flow_to_color(flow, max_flow=1.0)
    image[np.hypot(flow[..., 0], flow[..., 1]) > 1.0] = 255
    return image
