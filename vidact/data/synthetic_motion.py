"""Motion-only synthetic videos with exact ground-truth optical flow.

A clip is a random textured scene (smooth coloured noise plus random shapes) seen
through a moving affine camera. The class is the motion and nothing else:

    translate_{right,left,down,up}, rotate_{cw,ccw}, zoom_{in,out}
    (and translate_{down_right,down_left,up_right,up_left} for up to 12 classes)

Every frame is drawn from the same appearance distribution, whatever the class: the
texture, colours, shapes, orientation, scale and position are random per clip and the
scene is stationary in distribution under translation and rotation. (Zoom changes the
texture scale within a clip by at most 1.8x around a per-clip scale drawn from a 2x
log-uniform range, so single-frame scale statistics overlap almost entirely.) One frame
therefore says nothing about the class; two frames do.

Geometry. Frame pixel p (x right, y down, pixel centres at integers) shows canvas point
c with  p = A_t (c - c0) + f0 + m_t,  A_t = s_t * Rot(theta_t). The flow from frame t to
t + 1 (OpenCV convention: frame_t(p) == frame_{t+1}(p + flow(p))) is therefore exact:
    flow_t(p) = A_{t+1} A_t^{-1} (p - f0 - m_t) + f0 + m_{t+1} - p.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

MOTIONS: tuple[str, ...] = (
    "translate_right",
    "translate_left",
    "translate_down",
    "translate_up",
    "rotate_cw",
    "rotate_ccw",
    "zoom_in",
    "zoom_out",
    "translate_down_right",
    "translate_down_left",
    "translate_up_right",
    "translate_up_left",
)
_DIRECTIONS = {
    "right": (1.0, 0.0),
    "left": (-1.0, 0.0),
    "down": (0.0, 1.0),
    "up": (0.0, -1.0),
    "down_right": (math.sqrt(0.5), math.sqrt(0.5)),
    "down_left": (-math.sqrt(0.5), math.sqrt(0.5)),
    "up_right": (math.sqrt(0.5), -math.sqrt(0.5)),
    "up_left": (-math.sqrt(0.5), -math.sqrt(0.5)),
}

# Per-clip random ranges, in units of a 64-pixel frame (scaled with the frame size).
SPEED_PX = (1.0, 2.5)  # translation, pixels per frame at size 64
ROTATION_DEG = (3.0, 7.0)  # degrees per frame
ZOOM_TOTAL = (1.4, 1.8)  # scale change over the whole clip
SCALE = (0.7, 1.4)  # scene scale at the middle frame (log-uniform)
OFFSET_FRACTION = 0.15  # centre of motion within +-15% of the frame size


@dataclass(frozen=True)
class Clip:
    """A rendered clip: frames (T, H, W, 3) uint8 RGB and flow (T-1, H, W, 2) float32."""

    frames: np.ndarray
    flow: np.ndarray
    motion: str


def camera_path(
    motion: str, num_frames: int, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame 2x2 matrices A_t (T, 2, 2) and offsets m_t (T, 2) for `motion`."""
    if motion not in MOTIONS:
        raise ValueError(f"unknown motion {motion!r}")
    t = np.arange(num_frames, dtype=np.float64)
    middle = (num_frames - 1) / 2.0
    theta = np.full(num_frames, rng.uniform(0.0, 2 * math.pi))
    scale = np.full(num_frames, math.exp(rng.uniform(math.log(SCALE[0]), math.log(SCALE[1]))))
    offset = np.tile(rng.uniform(-OFFSET_FRACTION, OFFSET_FRACTION, size=2) * size, (num_frames, 1))
    kind, _, detail = motion.partition("_")
    if kind == "translate":
        speed = rng.uniform(*SPEED_PX) * size / 64.0
        direction = np.array(_DIRECTIONS[detail])
        # Start so that the clip's middle frame sits at the random offset.
        offset = offset + np.outer(t - middle, direction * speed)
    elif kind == "rotate":
        omega = math.radians(rng.uniform(*ROTATION_DEG))
        # In image coordinates (y down) a positive angle turns content clockwise on screen.
        theta = theta + (omega if detail == "cw" else -omega) * t
    else:  # zoom
        rate = math.log(rng.uniform(*ZOOM_TOTAL)) / max(num_frames - 1, 1)
        scale = scale * np.exp((rate if detail == "in" else -rate) * (t - middle))
    cos, sin = np.cos(theta), np.sin(theta)
    matrices = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)
    matrices = matrices * scale[:, None, None]
    return matrices, offset


def flow_between(
    a0: np.ndarray, m0: np.ndarray, a1: np.ndarray, m1: np.ndarray, size: int
) -> np.ndarray:
    """Exact flow (H, W, 2) from the frame with camera (a0, m0) to the one with (a1, m1)."""
    centre = (size - 1) / 2.0
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    points = np.stack([xs, ys], -1) - centre - m0  # p - f0 - m_t
    relative = np.linalg.solve(a0, points.reshape(-1, 2).T)  # A_t^-1 (p - f0 - m_t)
    moved = (a1 @ relative).T.reshape(size, size, 2) + centre + m1
    return (moved - np.stack([xs, ys], -1)).astype(np.float32)


def random_scene(side: int, frame_size: int, rng: np.random.Generator) -> np.ndarray:
    """A (side, side, 3) float32 canvas: smooth coloured noise plus random shapes."""
    unit = frame_size / 64.0
    sigma = rng.uniform(1.5, 4.0) * unit
    white = rng.standard_normal((side, side, 3)).astype(np.float32)
    noise = np.asarray(cv2.GaussianBlur(white, (0, 0), sigma), np.float32)
    noise /= noise.std() + 1e-6
    mix = rng.normal(0.0, 45.0, size=(3, 3)).astype(np.float32)
    canvas = noise @ mix + rng.uniform(60.0, 190.0, size=3).astype(np.float32)
    # 4 to 9 shapes per frame-sized area of the canvas.
    for _ in range(int(rng.uniform(4, 9) * (side / frame_size) ** 2)):
        colour = tuple(float(c) for c in rng.uniform(0, 255, size=3))
        centre = (int(rng.integers(0, side)), int(rng.integers(0, side)))
        radius = int(rng.uniform(4, 14) * unit)
        shape = rng.integers(0, 3)
        if shape == 0:
            cv2.circle(canvas, centre, radius, colour, -1, cv2.LINE_AA)
        elif shape == 1:
            box = cv2.boxPoints((centre, (2 * radius, radius), float(rng.uniform(0, 180))))
            cv2.fillPoly(canvas, [box.astype(np.int32)], colour, cv2.LINE_AA)
        else:
            angles = rng.uniform(0, 2 * math.pi) + np.array([0, 2.1, 4.2])
            tri = np.stack([np.cos(angles), np.sin(angles)], -1) * radius + np.array(centre)
            cv2.fillPoly(canvas, [tri.astype(np.int32)], colour, cv2.LINE_AA)
    # A light blur softens shape edges so bilinear sampling stays faithful.
    softened = np.asarray(cv2.GaussianBlur(canvas, (0, 0), 0.6 * unit), np.float32)
    return np.clip(softened, 0, 255)


def render_clip(
    motion: str,
    num_frames: int,
    size: int,
    rng: np.random.Generator,
    flow_pairs: list[int] | None = None,
) -> Clip:
    """Render one clip of `motion` and the exact flow of the pairs (t, t+1) in `flow_pairs`.

    `flow_pairs=None` computes the flow of every consecutive pair.
    """
    matrices, offsets = camera_path(motion, num_frames, size, rng)
    centre = (size - 1) / 2.0
    # Size the canvas to cover every frame corner at every time step.
    corners = np.array([[0, 0], [size - 1, 0], [0, size - 1], [size - 1, size - 1]], float)
    reach = 0.0
    for a, m in zip(matrices, offsets, strict=True):
        reach = max(reach, float(np.abs(np.linalg.solve(a, (corners - centre - m).T)).max()))
    side = int(2 * math.ceil(reach) + 8)
    canvas = random_scene(side, size, rng)
    c0 = (side - 1) / 2.0
    frames = np.empty((num_frames, size, size, 3), np.uint8)
    for t, (a, m) in enumerate(zip(matrices, offsets, strict=True)):
        # warpAffine maps canvas -> frame with p = A (c - c0) + f0 + m.
        affine = np.hstack([a, (centre + m - a @ np.array([c0, c0]))[:, None]])
        warped = cv2.warpAffine(
            canvas, affine, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
        )
        frames[t] = np.clip(np.rint(warped), 0, 255).astype(np.uint8)
    pairs = list(range(num_frames - 1)) if flow_pairs is None else list(flow_pairs)
    flow = (
        np.stack(
            [
                flow_between(matrices[t], offsets[t], matrices[t + 1], offsets[t + 1], size)
                for t in pairs
            ]
        )
        if pairs
        else np.zeros((0, size, size, 2), np.float32)
    )
    return Clip(frames=frames, flow=flow, motion=motion)
