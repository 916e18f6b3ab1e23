"""Shared fixtures: tiny generated videos and datasets (nothing is downloaded)."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")


def write_video(path: Path, frames: np.ndarray, fps: float = 25.0, fourcc: str = "mp4v") -> Path:
    """Write RGB uint8 frames (T, H, W, 3) with OpenCV; returns `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    assert writer.isOpened(), f"cannot write {path}"
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


BITS = 6  # frame indices up to 63 survive lossy coding as black/white stripes


def numbered_frames(count: int, height: int = 48, width: int = 64) -> np.ndarray:
    """Frames that carry their own index: the top half holds BITS black/white stripes (the
    binary index), the bottom half a fixed random texture."""
    frames = np.zeros((count, height, width, 3), np.uint8)
    rng = np.random.default_rng(0)
    frames[:, height // 2 :] = rng.integers(0, 255, (height - height // 2, width, 3), np.uint8)
    stripe = width // BITS
    for i in range(count):
        for bit in range(BITS):
            if (i >> bit) & 1:
                frames[i, : height // 2, bit * stripe : (bit + 1) * stripe] = 255
    return frames


def frame_index_of(frame: np.ndarray) -> int:
    """Invert `numbered_frames`."""
    height, width = frame.shape[:2]
    stripe = width // BITS
    index = 0
    for bit in range(BITS):
        block = frame[4 : height // 2 - 4, bit * stripe + 2 : (bit + 1) * stripe - 2]
        index |= int(block.mean() > 128) << bit
    return index


@pytest.fixture(scope="session")
def numbered_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 30-frame 64x48 MP4 whose frames encode their own index."""
    return write_video(tmp_path_factory.mktemp("videos") / "numbered.mp4", numbered_frames(30))


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic dataset (4 classes x 6 videos, 8 frames, 32 px)."""
    from vidact.data.sources.synthetic import SyntheticSpec, make_synthetic_dataset

    out = tmp_path_factory.mktemp("synthetic") / "data"
    spec = SyntheticSpec(classes=4, videos_per_class=6, frames=8, size=32, seed=3)
    make_synthetic_dataset(out, spec, workers=1)
    return out
