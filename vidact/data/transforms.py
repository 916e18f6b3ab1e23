"""Clip transforms: the same crop and flip for every frame of a clip.

A clip arrives as uint8 (T, H, W, C) — RGB (C = 3) or quantised TV-L1 flow (C = 2) —
and leaves as float32 (C, T, S, S), the layout of torchvision's video models. It stays
uint8 until the last step: crop, resize, flip on uint8, then one conversion to float
fused with the normalisation.

Geometry is decided on the frame as if it had been resized to `short_side` (as TSN,
mmaction2 and CT-Net do), then mapped back so that each frame is cropped and resized
once, straight to `input_size`.

Training crops:
- multiscale: TSN's multi-scale crop. Crop width and height are each base * s for s in
  `scales` (base = short side; CT-Net appendix A.1 uses {1, .875, .75, .66}), with at
  most one step between the two choices, at one of 13 fixed positions; then resized.
- random_resized: Inception-style area (0.08-1) and aspect (3/4-4/3) jitter.
- center: resize, centre crop (also the validation view).
Horizontal flip (p = 0.5) can be switched off (Something-Something labels such as
"left to right" change meaning under a flip). Flipping flow also mirrors its x channel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch
from torch import Tensor
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from vidact.constants import IMAGENET_MEAN, IMAGENET_STD

if TYPE_CHECKING:
    from vidact.recipe import DataConfig

Box = tuple[int, int, int, int]  # top, left, height, width in source pixels
_MAX_DISTORT = 1  # TSN: width and height scale indices differ by at most one


@dataclass(frozen=True)
class ClipTransform:
    train: bool
    input_size: int = 224
    short_side: int = 256
    crop: str = "multiscale"
    scales: tuple[float, ...] = (1.0, 0.875, 0.75, 0.66)
    hflip: bool = True
    modality: str = "rgb"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    @classmethod
    def from_recipe(cls, data: DataConfig, train: bool) -> ClipTransform:
        """The training (`train`) or validation transform of a recipe's data section; a
        two-stream clip's flow part gets `dataclasses.replace(t, modality="flow")`."""
        return cls(
            train=train,
            input_size=data.input_size,
            short_side=data.short_side,
            crop=data.train_crop,
            scales=tuple(data.scales),
            hflip=data.hflip,
            mean=tuple(data.mean),
            std=tuple(data.std),
            modality="flow" if data.modality == "flow" else "rgb",
        )

    def __call__(self, frames: np.ndarray, rng: np.random.Generator | None = None) -> Tensor:
        height, width = frames.shape[1:3]
        if self.train:
            rng = rng or np.random.default_rng()
            box = self.train_box(height, width, rng)
            flip = self.hflip and bool(rng.random() < 0.5)
        else:
            box = center_box(height, width, self.short_side, self.input_size)
            flip = False
        clip = crop_resize(frames, box, self.input_size)
        if flip:
            clip = mirror(clip, self.modality)
        return self.normalize(clip.permute(1, 0, 2, 3))

    def train_box(self, height: int, width: int, rng: np.random.Generator) -> Box:
        if self.crop == "multiscale":
            return multiscale_box(height, width, self.short_side, self.input_size, self.scales, rng)
        if self.crop == "random_resized":
            return random_resized_box(height, width, rng)
        if self.crop == "center":
            return center_box(height, width, self.short_side, self.input_size)
        raise ValueError(f"unknown crop {self.crop!r}")

    def normalize(self, clip: Tensor, out: Tensor | None = None) -> Tensor:
        """(C, T, H, W) uint8 (or float in [0, 255]) -> float32 network input, contiguous:
        the clip's one conversion to float (into `out` when given, e.g. a view's row of a
        batch), then the normalisation in place."""
        if out is None:
            out = clip.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
        else:  # the layout change on uint8, then a contiguous conversion: 4x faster
            out.copy_(clip.contiguous())
        if self.modality == "flow":  # quantised flow in units of the bound, [-1, 1]
            return out.div_(127.5).sub_(1.0)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1, 1) * 255.0
        std = torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1, 1) * 255.0
        return out.sub_(mean).div_(std)


def crop_resize(frames: np.ndarray, box: Box, size: int | tuple[int, int]) -> Tensor:
    """Crop `box` from every frame and resize it to `size`, all on uint8:
    (T, H, W, C) -> uint8 (T, C, h, w), channels last in memory.

    The filter is bilinear, antialiased when it shrinks: torch's antialiased bilinear
    filter (torchvision.transforms.v2, its SIMD path for uint8 images), the filter the
    float path used before, so the only change is the rounding of each resized pixel to
    an integer (at most one grey level; tests/data/test_sampling_transforms.py holds the
    float reference). OpenCV's INTER_LINEAR skips source pixels when it shrinks more than
    twofold (aliasing), and INTER_AREA antialiases but is slower. When nothing shrinks the
    two filters are the same bilinear interpolation, and for two-channel flow, which torch
    has no SIMD code for (it has for 3 and 4 channels), OpenCV's is twice as fast.
    """
    top, left, height, width = box
    crop = frames[:, top : top + height, left : left + width]
    out_h, out_w = (size, size) if isinstance(size, int) else size
    if (height, width) == (out_h, out_w):
        return torch.from_numpy(crop).permute(0, 3, 1, 2)
    if crop.shape[-1] == 2 and height <= out_h and width <= out_w:
        out = np.empty((len(crop), out_h, out_w, 2), np.uint8)
        for frame, dst in zip(crop, out, strict=True):
            cv2.resize(frame, (out_w, out_h), dst=dst, interpolation=cv2.INTER_LINEAR)
        return torch.from_numpy(out).permute(0, 3, 1, 2)
    clip = torch.from_numpy(crop).permute(0, 3, 1, 2)  # (T, C, h, w), channels last
    return TF.resize(clip, [out_h, out_w], InterpolationMode.BILINEAR, antialias=True)


def mirror(clip: Tensor, modality: str) -> Tensor:
    """Flip a uint8 (T, C, h, w) clip horizontally; flow also mirrors its motion (the x
    channel's quantised value v becomes 255 - v: x-flow changes sign)."""
    clip = clip.flip(-1)
    if modality == "flow":
        clip[:, 0] = 255 - clip[:, 0]
    return clip


def _to_source(
    box_resized: tuple[float, float, float, float], ratio: float, height: int, width: int
) -> Box:
    top, left, h, w = (v / ratio for v in box_resized)
    h_i, w_i = max(1, min(height, round(h))), max(1, min(width, round(w)))
    top_i = min(max(0, round(top)), height - h_i)
    left_i = min(max(0, round(left)), width - w_i)
    return top_i, left_i, h_i, w_i


def center_box(height: int, width: int, short_side: int, crop: int) -> Box:
    """Resize so the short side is `short_side`, then the centred `crop` square."""
    ratio = short_side / min(height, width)
    rh, rw = height * ratio, width * ratio
    c = min(crop, rh, rw)
    return _to_source(((rh - c) / 2, (rw - c) / 2, c, c), ratio, height, width)


def fixed_offsets(
    image_w: float, image_h: float, crop_w: float, crop_h: float
) -> list[tuple[float, float]]:
    """TSN's 13 fixed crop positions (corners, centre, edge midpoints, quarter points)."""
    w_step, h_step = (image_w - crop_w) / 4, (image_h - crop_h) / 4
    grid = [(0, 0), (4, 0), (0, 4), (4, 4), (2, 2), (0, 2), (4, 2), (2, 4), (2, 0)]
    grid += [(1, 1), (3, 1), (1, 3), (3, 3)]
    return [(i * w_step, j * h_step) for i, j in grid]


def multiscale_box(
    height: int,
    width: int,
    short_side: int,
    input_size: int,
    scales: tuple[float, ...],
    rng: np.random.Generator,
) -> Box:
    ratio = short_side / min(height, width)
    rh, rw = height * ratio, width * ratio
    base = min(rh, rw)
    sizes = [base * s for s in scales]
    # TSN snaps sizes within 3 px of the input size to it exactly.
    sizes = [float(input_size) if abs(s - input_size) < 3 else s for s in sizes]
    pairs = [
        (w, h)
        for i, h in enumerate(sizes)
        for j, w in enumerate(sizes)
        if abs(i - j) <= _MAX_DISTORT
    ]
    crop_w, crop_h = pairs[int(rng.integers(len(pairs)))]
    offsets = fixed_offsets(rw, rh, crop_w, crop_h)
    left, top = offsets[int(rng.integers(len(offsets)))]
    return _to_source((top, left, crop_h, crop_w), ratio, height, width)


def random_resized_box(
    height: int,
    width: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    aspect: tuple[float, float] = (3 / 4, 4 / 3),
) -> Box:
    """Inception crop parameters (as torchvision's RandomResizedCrop), from `rng`."""
    area = height * width
    log_ratio = (math.log(aspect[0]), math.log(aspect[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        ratio = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * ratio))
        h = round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    side = min(height, width)  # fallback: centre square
    return (height - side) // 2, (width - side) // 2, side, side
