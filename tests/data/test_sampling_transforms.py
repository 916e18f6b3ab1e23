"""Clip sampling, the epoch batch sampler, and clip transforms."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from vidact.data.dataset import EpochBatchSampler, build_loader
from vidact.data.sampling import sample_indices, uniform_clip_indices
from vidact.data.transforms import (
    ClipTransform,
    center_box,
    crop_resize,
    fixed_offsets,
    multiscale_box,
)


def test_consecutive_dense_and_segment_indices() -> None:
    rng = np.random.default_rng(0)
    clip = sample_indices("consecutive", 100, 8, stride=4, rng=rng)
    assert np.all(np.diff(clip) == 1) and 0 <= clip[0] <= 92
    dense = sample_indices("dense", 100, 8, stride=4, rng=rng)
    assert np.all(np.diff(dense) == 4) and dense[-1] < 100
    assert list(sample_indices("dense", 100, 8, stride=4)) == list(range(35, 64, 4))  # centred
    segments = sample_indices("segment", 80, 8, rng=rng)
    assert all(10 * k <= i < 10 * (k + 1) for k, i in enumerate(segments))
    assert list(sample_indices("segment", 80, 8)) == [5, 15, 25, 35, 45, 55, 65, 75]


def test_short_videos_repeat_the_last_frame() -> None:
    assert list(sample_indices("consecutive", 3, 5)) == [0, 1, 2, 2, 2]
    assert list(sample_indices("segment", 2, 4)) == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="unknown sampler"):
        sample_indices("nope", 10, 2)


def test_uniform_test_clips_cover_the_video() -> None:
    clips = uniform_clip_indices("dense", 100, 4, 2, num_clips=3)
    starts = [int(c[0]) for c in clips]
    assert starts == sorted(starts) and starts[0] < 20 and starts[-1] > 70
    assert all(np.all(np.diff(c) == 2) for c in clips)


@pytest.mark.parametrize(("size", "world", "batch"), [(10, 2, 4), (9, 2, 4), (11, 3, 2), (7, 1, 3)])
def test_epoch_batches_cover_every_sample_exactly_once(size: int, world: int, batch: int) -> None:
    seen: list[int] = []
    lengths = set()
    for rank in range(world):
        sampler = EpochBatchSampler(size, batch, shuffle=True, seed=1, rank=rank, world=world)
        sampler.set_epoch(3)
        batches = list(sampler)
        lengths.add(len(batches))
        assert all(1 <= len(b) <= batch for b in batches)
        assert all(epoch == 3 for b in batches for epoch, _ in b)
        seen += [index for b in batches for _, index in b]
    assert sorted(seen) == list(range(size))  # every sample once, no padding
    assert len(lengths) == 1  # every rank takes the same number of steps


def test_epoch_batches_shuffle_per_epoch_and_resume_mid_epoch() -> None:
    sampler = EpochBatchSampler(20, 4, shuffle=True, seed=0)
    sampler.set_epoch(0)
    first = [i for b in sampler for _, i in b]
    sampler.set_epoch(1)
    second = [i for b in sampler for _, i in b]
    assert first != second and sorted(first) == sorted(second)
    sampler.set_epoch(1, start_batch=2)
    assert [i for b in sampler for _, i in b] == second[8:]
    assert len(sampler) == 3


class OpenCVThreads(Dataset[int]):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, key: object) -> int:
        return cv2.getNumThreads()


def test_loader_workers_resize_and_decode_in_one_opencv_thread() -> None:
    before = cv2.getNumThreads()
    cv2.setNumThreads(4)  # what a forked worker would inherit
    try:
        loader = build_loader(OpenCVThreads(), 1, shuffle=False, workers=1)  # type: ignore[arg-type]
        assert [int(batch) for batch in loader] == [1, 1]
    finally:
        cv2.setNumThreads(before)


def test_multiscale_crop_uses_paper_scales_and_fixed_positions() -> None:
    rng = np.random.default_rng(0)
    scales = (1.0, 0.875, 0.75, 0.66)
    sizes = set()
    for _ in range(300):
        top, left, h, w = multiscale_box(240, 320, 240, 224, scales, rng)
        sizes.add((h, w))
        assert top >= 0 and top + h <= 240 and left >= 0 and left + w <= 320
    allowed = {round(240 * s) if abs(240 * s - 224) >= 3 else 224 for s in scales}
    assert {h for h, _ in sizes} <= allowed | {224}
    assert len(sizes) >= 8  # independent width/height choices at most one step apart
    assert len(fixed_offsets(320, 240, 224, 224)) == 13


def test_center_box_after_short_side_resize() -> None:
    # 120x160 frame, short side 240 -> 240x320; centre 224 crop -> 112x112 in source pixels
    assert center_box(120, 160, 240, 224) == (4, 24, 112, 112)


def test_clip_transform_shapes_normalisation_and_flow_flip() -> None:
    frames = np.full((4, 40, 60, 3), 128, np.uint8)
    out = ClipTransform(train=False, input_size=32, short_side=40)(frames)
    assert out.shape == (3, 4, 32, 32) and out.dtype == torch.float32
    expected = (128 / 255 - 0.485) / 0.229
    assert out[0].mean().item() == pytest.approx(expected, abs=1e-4)
    flow = np.zeros((2, 32, 32, 2), np.uint8)
    flow[..., 0] = 200  # motion to the right
    flow[..., 1] = 128
    tf = ClipTransform(train=True, input_size=32, short_side=32, crop="center", modality="flow")
    outs = {round(float(tf(flow, np.random.default_rng(s))[0].mean()), 3) for s in range(12)}
    assert outs == {round(200 / 127.5 - 1, 3), round(55 / 127.5 - 1, 3)}  # flipped: x negated


def literal_transform(
    transform: ClipTransform, frames: np.ndarray, rng: np.random.Generator | None
) -> torch.Tensor:
    """The float path the uint8 one replaced, literally: crop, convert the crop to float,
    antialiased bilinear resize in float, flip, normalise."""
    height, width = frames.shape[1:3]
    if transform.train:
        assert rng is not None
        box = transform.train_box(height, width, rng)
        flip = transform.hflip and bool(rng.random() < 0.5)
    else:
        box, flip = center_box(height, width, transform.short_side, transform.input_size), False
    top, left, h, w = box
    clip = torch.from_numpy(frames[:, top : top + h, left : left + w].copy())
    clip = clip.permute(0, 3, 1, 2).float()
    size = (transform.input_size, transform.input_size)
    if tuple(clip.shape[-2:]) != size:
        clip = F.interpolate(clip, size=size, mode="bilinear", align_corners=False, antialias=True)
    clip = clip.permute(1, 0, 2, 3)
    if flip:
        clip = clip.flip(-1)
        if transform.modality == "flow":
            clip[0] = 255.0 - clip[0]
    if transform.modality == "flow":
        return clip / 127.5 - 1.0
    mean = torch.tensor(transform.mean).view(-1, 1, 1, 1) * 255.0
    std = torch.tensor(transform.std).view(-1, 1, 1, 1) * 255.0
    return (clip - mean) / std


@pytest.mark.parametrize("modality", ["rgb", "flow"])
@pytest.mark.parametrize("crop", ["multiscale", "random_resized", "center", "eval"])
def test_uint8_transform_equals_the_float_path_within_one_grey_level(
    modality: str, crop: str
) -> None:
    """Crop and resize on uint8 round each resized pixel once: at most one grey level
    (1/255 of the range) from the float path, never more, and exact where no resize."""
    channels = 3 if modality == "rgb" else 2
    smooth = np.random.default_rng(1).integers(0, 256, (6, 12, 16, channels)).astype(np.uint8)
    frames = np.stack([cv2.resize(f, (90, 60), interpolation=cv2.INTER_CUBIC) for f in smooth])
    noise = np.random.default_rng(2).integers(0, 256, frames.shape, dtype=np.uint8)
    if frames.ndim == 3:  # cv2 drops a single channel axis; keep (T, H, W, C)
        frames = frames[..., None]
    edges = (np.arange(90) % 7 == 0).reshape(1, 1, 90, 1)  # sharp columns among smooth ones
    frames = np.ascontiguousarray(np.where(edges, noise, frames).astype(np.uint8))
    transform = ClipTransform(
        train=crop != "eval", input_size=32, short_side=48,
        crop="center" if crop == "eval" else crop, modality=modality,
    )  # fmt: skip
    one_level = (1 / 127.5) if modality == "flow" else 1 / (255 * min(transform.std))
    for seed in range(8):
        fast = transform(frames, np.random.default_rng(seed))
        slow = literal_transform(transform, frames, np.random.default_rng(seed))
        assert fast.shape == slow.shape and fast.dtype == torch.float32 and fast.is_contiguous()
        error = (fast - slow).abs().max().item()
        assert error <= one_level * 1.0001
    assert (fast - slow).abs().mean().item() < one_level / 2  # rounding, not a shifted filter


@pytest.mark.parametrize("channels", [2, 3])
@pytest.mark.parametrize("box_hw", [(20, 20), (20, 32), (32, 13), (40, 25), (48, 48)])
def test_crop_resize_is_the_float_filter_within_one_grey_level(
    channels: int, box_hw: tuple[int, int]
) -> None:
    """Enlarging (OpenCV's bilinear for two channels, torch's for three), one axis kept,
    and shrinking (torch's antialiased filter): each pixel within one grey level of the
    antialiased bilinear filter in float, on noise (the worst case for rounding)."""
    frames = np.random.default_rng(3).integers(0, 256, (3, 50, 60, channels), dtype=np.uint8)
    box = (5, 7, *box_hw)
    fast = crop_resize(frames, box, 32)
    top, left, h, w = box
    crop = torch.from_numpy(frames[:, top : top + h, left : left + w].astype(np.float32))
    slow = F.interpolate(crop.permute(0, 3, 1, 2), size=(32, 32), mode="bilinear",
                         align_corners=False, antialias=True)  # fmt: skip
    assert fast.shape == (3, channels, 32, 32) and fast.dtype == torch.uint8
    error = (fast.float() - slow).abs()
    assert error.max().item() <= 1.0 and error.mean().item() < 0.5


def test_uint8_transform_is_exact_when_nothing_is_resized() -> None:
    frames = np.random.default_rng(0).integers(0, 256, (3, 32, 40, 3), dtype=np.uint8)
    transform = ClipTransform(train=False, input_size=32, short_side=32)
    fast = transform(frames)
    assert torch.equal(fast, literal_transform(transform, frames, None))
