"""Classes by speed: a small textured square moving by sub-pixel steps over a still texture.

The harder synthetic task of issue 14 ("Table 3 in miniature"): on the camera-motion task
one iteration of the flow layer is enough, because the direction of motion needs only the
sign of the flow. Here class k is the speed ``speeds[k]`` in pixels per frame, in a
direction drawn uniformly per clip, so a network must measure how far the object moved;
one iteration of TV-L1 moves the flow by at most lambda * theta * |grad I|, so a good
estimate needs several.

A clip: a still background texture; ``distractors`` squares twice the object's size,
each moving at its own speed, uniform between the smallest and the largest class speed,
in its own random direction (whatever the class); on top, the target square of
``object_size`` pixels, moving at the class speed. Every texture is smooth noise (Gaussian,
sigma ``TEXTURE_SIGMA`` px) with mean ``MEAN_GREY`` and standard deviation ``contrast``
(grey levels / 255); sensor noise is Gaussian with standard deviation ``noise``, drawn per
pixel, frame and colour channel. Frames are grey (three equal channels before the noise).

One frame says nothing about the class. The textures are drawn alike for every class and
the squares move on a torus (they wrap around the frame's borders): with the start drawn
uniformly on the torus, the position in every frame is uniform over the frame whatever
the speed, and so is its sub-pixel phase (bilinear resampling blurs alike).

Geometry: square j's top-left corner at frame t is c_j + t * v_j (mod size); its pixels
are resampled bilinearly with wrap-around. The flow from frame t to t + 1 (OpenCV
convention, frame_t(p) == frame_{t+1}(p + flow(p))) is v_j on the pixels that the topmost
square covers by at least half in frame t, and 0 on the still background.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from vidact.data.synthetic_motion import Clip

SPEEDS = (0.5, 1.0, 2.0)  # pixels per frame: the default classes
OBJECT_SIZE = 6  # side of the target square, pixels
CONTRAST = 0.15  # texture standard deviation, in units of the full grey range
MEAN_GREY = 0.5  # texture mean, in units of the full grey range
TEXTURE_SIGMA = 1.0  # pixels: smooth enough that a sub-pixel shift is well defined
DISTRACTOR_SCALE = 2  # distractors are squares this many times the object's side


def speed_class_name(speed: float) -> str:
    """The class name of `speed` px/frame, e.g. "speed_0.5px"."""
    return f"speed_{speed:g}px"


def smooth_texture(shape: tuple[int, int], contrast: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth Gaussian noise of `shape`, mean MEAN_GREY and standard deviation `contrast`."""
    white = rng.standard_normal(shape).astype(np.float32)
    blurred = np.asarray(
        cv2.GaussianBlur(white, (0, 0), TEXTURE_SIGMA, borderType=cv2.BORDER_REFLECT), np.float32
    )
    blurred = (blurred - blurred.mean()) / (blurred.std() + 1e-6)
    return MEAN_GREY + contrast * blurred


def _shift_on_torus(layer: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """`layer` translated by `shift` (x, y) px with bilinear resampling and wrap-around."""
    size = layer.shape[0]
    affine = np.array([[1.0, 0.0, shift[0]], [0.0, 1.0, shift[1]]])
    return np.asarray(
        cv2.warpAffine(
            layer, affine, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP
        ),
        np.float32,
    )


def _random_velocity(speed: float, rng: np.random.Generator) -> np.ndarray:
    angle = rng.uniform(0.0, 2 * math.pi)
    return speed * np.array([math.cos(angle), math.sin(angle)])


def render_speed_clip(
    speed: float,
    num_frames: int,
    size: int,
    rng: np.random.Generator,
    flow_pairs: list[int] | None = None,
    object_size: int = OBJECT_SIZE,
    contrast: float = CONTRAST,
    noise: float = 0.0,
    distractors: int = 0,
    distractor_speeds: tuple[float, float] = (min(SPEEDS), max(SPEEDS)),
) -> Clip:
    """Render one clip whose target square moves at `speed` px/frame, and the exact flow of
    the pairs (t, t + 1) in `flow_pairs` (None: every consecutive pair)."""
    background = smooth_texture((size, size), contrast, rng)
    # (side, velocity) of every square, bottom to top: distractors, then the target.
    squares = [
        (DISTRACTOR_SCALE * object_size, _random_velocity(rng.uniform(*distractor_speeds), rng))
        for _ in range(distractors)
    ]
    squares.append((object_size, _random_velocity(speed, rng)))
    layers = []  # per square: (premultiplied texture, coverage) at the origin, start, velocity
    for side, velocity in squares:
        coverage = np.zeros((size, size), np.float32)
        coverage[:side, :side] = 1.0
        texture = np.zeros((size, size), np.float32)
        texture[:side, :side] = smooth_texture((side, side), contrast, rng)
        start = rng.uniform(0.0, size, size=2)
        layers.append((texture, coverage, start, velocity))
    frames = np.empty((num_frames, size, size, 3), np.uint8)
    flows = np.zeros((num_frames, size, size, 2), np.float32)
    for t in range(num_frames):
        image = background.copy()
        for texture, coverage, start, velocity in layers:
            shift = start + t * velocity
            alpha = _shift_on_torus(coverage, shift)
            image = image * (1.0 - alpha) + _shift_on_torus(texture, shift)
            flows[t][alpha >= 0.5] = velocity
        grey = np.repeat(image[..., None], 3, axis=-1)
        if noise > 0:
            grey = grey + noise * rng.standard_normal(grey.shape).astype(np.float32)
        frames[t] = np.clip(np.rint(grey * 255.0), 0, 255).astype(np.uint8)
    pairs = list(range(num_frames - 1)) if flow_pairs is None else list(flow_pairs)
    return Clip(frames=frames, flow=flows[pairs], motion=speed_class_name(speed))
