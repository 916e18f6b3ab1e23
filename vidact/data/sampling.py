"""Which frame indices a clip uses.

- dense:       T frames `stride` apart from a random start (Kinetics, CT-Net, I3D);
- consecutive: dense with stride 1 (representation flow computes flow between
               adjacent frames, so its input must be consecutive);
- segment:     TSN: the video is cut into T equal segments and one frame is taken from
               each, at a random offset for training and the middle for testing
               (Something-Something, TSN-style models).

Videos shorter than a clip repeat their last frame (clamping), as mmaction2 does.
An untrimmed video's sample names its action as [start, end) in seconds; `segment_range`
turns that into the frames [first, stop) that clips are drawn from.
Every function is pure: randomness comes from the `rng` passed in, so a clip is a
function of (seed, epoch, sample index) and training is reproducible across workers.
"""

from __future__ import annotations

import math

import numpy as np

SAMPLERS = ("consecutive", "dense", "segment")


def dense_indices(
    num_frames: int, clip_len: int, stride: int, rng: np.random.Generator | None
) -> np.ndarray:
    """`clip_len` indices `stride` apart; random start with `rng`, centred without."""
    span = (clip_len - 1) * stride + 1
    room = max(num_frames - span, 0)
    start = int(rng.integers(0, room + 1)) if rng is not None else room // 2
    return np.minimum(start + stride * np.arange(clip_len), num_frames - 1)


def segment_indices(num_frames: int, clip_len: int, rng: np.random.Generator | None) -> np.ndarray:
    """TSN segment sampling: one frame from each of `clip_len` equal segments."""
    edges = np.linspace(0, num_frames, clip_len + 1)
    lengths = np.maximum(edges[1:] - edges[:-1], 1e-6)
    offsets = rng.random(clip_len) * lengths if rng is not None else lengths / 2
    return np.minimum((edges[:-1] + offsets).astype(np.int64), num_frames - 1)


def segment_bounds(
    num_frames: int, fps: float, start: float | None, end: float | None
) -> tuple[int, int]:
    """Frames [first, stop) shown during [start, end) seconds of a `num_frames` video at
    `fps`, frame i being shown over [i / fps, (i + 1) / fps); the whole video when `fps`
    is unknown (0). Either end may be None (the video's start or end); first == stop when
    the segment holds no frame. What `vidact prepare` extracts (prepare/options.py)."""
    first, stop = 0, num_frames
    if fps > 0:
        if start is not None:
            first = min(num_frames, max(0, math.floor(start * fps + 1e-6)))
        if end is not None:
            stop = min(num_frames, max(first, math.ceil(end * fps - 1e-6)))
    return first, stop


def segment_range(
    num_frames: int, fps: float, start: float | None, end: float | None
) -> tuple[int, int]:
    """`segment_bounds` for clips: ValueError if the segment needs a frame rate that is
    unknown, or holds no frame."""
    if (start is not None or end is not None) and fps <= 0:
        raise ValueError("a [start, end) segment in seconds needs the frame rate")
    first, stop = segment_bounds(num_frames, fps, start, end)
    if stop <= first:
        raise ValueError(
            f"the segment [{start}, {end}) s holds no frame of {num_frames} at {fps:g} fps"
        )
    return first, stop


def sample_indices(
    sampler: str,
    num_frames: int,
    clip_len: int,
    stride: int = 1,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Indices of one clip; `rng=None` gives the deterministic test-time clip."""
    if num_frames < 1:
        raise ValueError("a video needs at least one frame")
    if sampler == "consecutive":
        return dense_indices(num_frames, clip_len, 1, rng)
    if sampler == "dense":
        return dense_indices(num_frames, clip_len, stride, rng)
    if sampler == "segment":
        return segment_indices(num_frames, clip_len, rng)
    raise ValueError(f"unknown sampler {sampler!r}; use one of {', '.join(SAMPLERS)}")


def uniform_clip_indices(
    sampler: str, num_frames: int, clip_len: int, stride: int, num_clips: int
) -> list[np.ndarray]:
    """`num_clips` test clips spread uniformly over the video (multi-clip testing).

    dense/consecutive: clip starts evenly spaced over the valid range (SlowFast, CT-Net);
    segment: the clips use offsets (k + 0.5) / num_clips inside each segment (TSN).
    """
    clips = []
    if sampler == "segment":
        edges = np.linspace(0, num_frames, clip_len + 1)
        lengths = edges[1:] - edges[:-1]
        for k in range(num_clips):
            offsets = lengths * (k + 0.5) / num_clips
            clips.append(np.minimum((edges[:-1] + offsets).astype(np.int64), num_frames - 1))
        return clips
    step = 1 if sampler == "consecutive" else stride
    span = (clip_len - 1) * step + 1
    room = max(num_frames - span, 0)
    for k in range(num_clips):
        start = round(room * (k + 0.5) / num_clips) if num_clips > 1 else room // 2
        clips.append(np.minimum(start + step * np.arange(clip_len), num_frames - 1))
    return clips
