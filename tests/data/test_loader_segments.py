"""Untrimmed videos: training and test clips come from the sample's [start, end) only."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import vidact.data.views as views_module
from tests.data.numbered_videos import index_of, numbered_frames, write_pyav
from vidact.data.crops import Crops
from vidact.data.dataset import ClipDataset, ClipSpec
from vidact.data.manifest import Sample
from vidact.data.sampling import segment_range
from vidact.data.transforms import ClipTransform
from vidact.data.video import read_clip
from vidact.data.views import VideoViews, ViewSpec

FPS = 25  # the video: 100 frames, frame i shown at i / 25 s


@pytest.fixture(scope="module")
def untrimmed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("untrimmed")
    write_pyav(root / "long.mp4", numbered_frames(100), options={"g": "12"}, fps=FPS)
    return root


def test_segment_range_is_the_frames_prepare_extracts() -> None:
    assert segment_range(100, 25.0, 1.0, 2.0) == (25, 50)
    assert segment_range(100, 25.0, None, 2.0) == (0, 50)
    assert segment_range(100, 25.0, 3.5, None) == (87, 100)
    assert segment_range(100, 25.0, 1.01, 1.99) == (25, 50)  # frames shown in [1.01, 1.99)
    assert segment_range(100, 0.0, None, None) == (0, 100)
    for start, end, fps in [(5.0, 6.0, 25.0), (1.0, 1.0, 25.0), (1.0, 2.0, 0.0)]:
        with pytest.raises(ValueError):
            segment_range(100, fps, start, end)


@pytest.mark.parametrize("sampler", ["consecutive", "dense", "segment"])
def test_training_clips_come_from_the_segment_only(untrimmed: Path, sampler: str) -> None:
    sample = Sample("long.mp4", 0, "a", 100, start=1.0, end=2.0)
    spec = ClipSpec(num_frames=8, sampler=sampler, frame_stride=2)
    dataset = ClipDataset([sample], untrimmed, spec, ClipTransform(train=True, input_size=32))
    seen: set[int] = set()
    for epoch in range(25):
        rng = np.random.default_rng([0, epoch, 0])
        frames, indices = dataset.read_rgb(sample, rng)
        assert [index_of(f) for f in frames] == indices  # the frames named, decoded
        seen.update(indices)
    assert min(seen) >= 25 and max(seen) <= 49
    assert max(seen) - min(seen) >= 15  # the draws spread over the segment
    item = dataset[(3, 0)]
    assert item["failed"] == "" and tuple(item["clip"].shape) == (3, 8, 32, 32)


def test_flow_clips_stay_one_frame_inside_the_segment(untrimmed: Path) -> None:
    sample = Sample("long.mp4", 0, "a", 100, start=1.0, end=2.0, flow="flow/long")
    spec = ClipSpec(num_frames=24, modality="flow")
    dataset = ClipDataset([sample], untrimmed, spec, ClipTransform(train=True))
    for epoch in range(10):
        indices = dataset.clip_indices(sample, 100, 25.0, np.random.default_rng(epoch))
        assert min(indices) >= 25 and max(indices) <= 48  # pair 48 is the flow 48 -> 49


def test_a_segment_outside_the_video_replaces_the_sample_with_its_reason(untrimmed: Path) -> None:
    good = Sample("long.mp4", 0, "a", 100)
    outside = Sample("long.mp4", 0, "a", 100, start=9.0, end=10.0)
    dataset = ClipDataset([outside, good], untrimmed, ClipSpec(num_frames=4), ClipTransform(True))
    item = dataset[(0, 0)]
    assert "holds no frame" in item["failed"] and item["index"] == 1


def test_test_views_come_from_the_segment_only(
    untrimmed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded: list[list[int]] = []

    def recording(path: Path, pick: Callable[[int, float], Sequence[int]], backend: Any) -> Any:
        frames = read_clip(path, lambda n, fps: decoded.append(list(pick(n, fps))) or decoded[-1])
        assert [index_of(f) for f in frames] == decoded[-1]
        return frames

    monkeypatch.setattr(views_module, "read_clip", recording)
    spec = ViewSpec(ClipSpec(num_frames=8), clips=3, crops=Crops.parse("3"), crop_size=32)
    sample = Sample("long.mp4", 0, "a", 100, start=2.0, end=3.0)
    item = VideoViews([sample], untrimmed, [spec])[0]
    assert item["error"] == "" and tuple(item["views"][0].shape) == (9, 3, 8, 32, 32)
    # 3 clips of 8 spread over frames 50..74: starts 53, 58, 64 (uniform_clip_indices)
    assert decoded == [sorted({i for start in (53, 58, 64) for i in range(start, start + 8)})]
    outside = Sample("long.mp4", 0, "a", 100, start=7.0)
    assert "holds no frame" in VideoViews([outside], untrimmed, [spec])[0]["error"]
