"""Synthetic image pairs with known flow, shared by the flow tests."""

from __future__ import annotations

import cv2
import numpy as np


def texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth random texture (sum of upsampled noise octaves), float32 on 0-255."""
    rng = np.random.default_rng(seed)
    img = np.zeros((height, width), np.float32)
    for step, amp in [(2, 0.2), (4, 0.3), (8, 0.5), (16, 0.6)]:
        noise = rng.standard_normal((height // step + 2, width // step + 2)).astype(np.float32)
        img += amp * cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)
    img = (img - img.min()) / (img.max() - img.min()) * 255.0
    return img.astype(np.float32)


def smooth_field(height: int, width: int, magnitude: float, seed: int = 0) -> np.ndarray:
    """A smooth (H, W, 2) flow field whose largest component is `magnitude` pixels."""
    rng = np.random.default_rng(seed + 1000)
    coarse = rng.standard_normal((3, 3, 2)).astype(np.float32)
    field = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    return (field / np.abs(field).max() * magnitude).astype(np.float32)


def warped_pair(second: np.ndarray, flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(frame0, frame1) uint8 with frame0(x) = frame1(x + flow(x)), so the flow from frame0
    to frame1 is exactly `flow` (up to interpolation and rounding)."""
    h, w = second.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    first = cv2.remap(
        second,
        xs + flow[..., 0],
        ys + flow[..., 1],
        cv2.INTER_CUBIC,
        borderMode=cv2.BORDER_REFLECT,
    )
    to_u8 = lambda a: np.clip(np.rint(a), 0, 255).astype(np.uint8)  # noqa: E731
    return to_u8(first), to_u8(second)


def translation_pair(
    size: int, dx: float, dy: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A texture moved by (dx, dy) pixels between the frames; returns frame0, frame1, flow."""
    flow = np.empty((size, size, 2), np.float32)
    flow[..., 0], flow[..., 1] = dx, dy
    first, second = warped_pair(texture(size, size, seed), flow)
    return first, second, flow


def field_pair(
    size: int, magnitude: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A texture deformed by a known smooth field; returns frame0, frame1, flow."""
    flow = smooth_field(size, size, magnitude, seed)
    first, second = warped_pair(texture(size, size, seed), flow)
    return first, second, flow
