"""Test views: centre / 3-crop / 10-crop / random geometry, flips, one decode per video."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vidact.data.views as views_module
from vidact.data.crops import Crops
from vidact.data.dataset import ClipSpec
from vidact.data.manifest import Sample
from vidact.data.transforms import ClipTransform, center_box, crop_resize
from vidact.data.views import VideoViews, View, ViewSpec, build_views, cut_boxes, view_boxes


def test_parse_crops() -> None:
    assert Crops.parse("1") == Crops("centre", 1)
    assert Crops.parse("3") == Crops("three", 3)
    assert Crops.parse(10) == Crops("ten", 10)
    assert Crops.parse("random:25") == Crops("random", 25)
    for bad in ("2", "random:0", "random:x", "five"):
        with pytest.raises(ValueError, match="crops must be"):
            Crops.parse(bad)
    for text in ("1", "3", "10", "random:25"):
        assert str(Crops.parse(text)) == text  # the setting round-trips
    described = [Crops.parse(t).describe() for t in ("1", "3", "random:1", "random:25")]
    assert described == ["1 crop", "3 crops", "1 random crops", "25 random crops"]


def test_three_crops_run_along_the_long_side() -> None:
    # 320 x 240 landscape at its own scale: left, centre, right, centred vertically.
    boxes = [v.box for v in view_boxes(240, 320, 240, 240, Crops.parse("3"))]
    assert boxes == [(0, 0, 240, 240), (0, 40, 240, 240), (0, 80, 240, 240)]
    # Portrait: top, centre, bottom.
    boxes = [v.box for v in view_boxes(320, 240, 240, 240, Crops.parse("3"))]
    assert boxes == [(0, 0, 240, 240), (40, 0, 240, 240), (80, 0, 240, 240)]
    # With a resize: 48 x 64 -> short side 32 (x 2/3), 24 px crops = 36 source px;
    # in the resized frame lefts 0, 9.33, 18.67 and top 4 -> source 0, 14, 28 and 6.
    boxes = [v.box for v in view_boxes(48, 64, 32, 24, Crops.parse("3"))]
    assert boxes == [(6, 0, 36, 36), (6, 14, 36, 36), (6, 28, 36, 36)]
    assert not any(v.flip for v in view_boxes(48, 64, 32, 24, Crops.parse("3")))


def test_ten_crops_are_four_corners_centre_and_their_flips() -> None:
    views = view_boxes(48, 64, 32, 24, Crops.parse("10"))
    assert len(views) == 10
    first, second = views[:5], views[5:]
    assert [v.box for v in first] == [
        (0, 0, 36, 36),  # top left
        (0, 28, 36, 36),  # top right
        (12, 0, 36, 36),  # bottom left
        (12, 28, 36, 36),  # bottom right
        (6, 14, 36, 36),  # centre
    ]
    assert first[4].box == center_box(48, 64, 32, 24)
    assert not any(v.flip for v in first) and all(v.flip for v in second)
    assert [v.box for v in second] == [v.box for v in first]


def test_centre_view_is_the_validation_view() -> None:
    frames = np.random.default_rng(0).integers(0, 256, (4, 48, 64, 3), dtype=np.uint8)
    transform = ClipTransform(train=False, input_size=24, short_side=32)
    built = build_views(
        frames, [np.arange(4)], view_boxes(48, 64, 32, 24, Crops.parse("1")), 24, transform
    )
    assert built.shape == (1, 3, 4, 24, 24)
    assert torch.equal(built[0], transform(frames))


def literal_views(frames: np.ndarray, boxes: list[tuple[int, int, int, int]], size: int) -> Any:
    """The several-view definition, literally, in float: resize the whole frames at the
    boxes' scale (antialiased bilinear), then cut each box at its rounded offset."""
    height, width = frames.shape[1:3]
    scale_y, scale_x = size / boxes[0][2], size / boxes[0][3]
    out = (round(height * scale_y), round(width * scale_x))
    clip = torch.from_numpy(frames.astype(np.float32)).permute(0, 3, 1, 2)
    resized = F.interpolate(clip, size=out, mode="bilinear", align_corners=False, antialias=True)
    views = {}
    for top, left, h, w in boxes:
        y, x = round(top * scale_y), round(left * scale_x)
        views[(top, left, h, w)] = resized[..., y : y + size, x : x + size]
    return views


@pytest.mark.parametrize("crops", ["3", "10", "random:7"])
def test_several_views_are_crops_of_the_frames_resized_once(crops: str) -> None:
    """Within one grey level of the float definition (uint8 rounding), on noise."""
    frames = np.random.default_rng(0).integers(0, 256, (3, 48, 64, 3), dtype=np.uint8)
    boxes = [
        v.box for v in view_boxes(48, 64, 32, 24, Crops.parse(crops), np.random.default_rng(1))
    ]
    fast, slow = cut_boxes(frames, boxes, 24), literal_views(frames, boxes, 24)
    assert fast.keys() == slow.keys()
    for box, view in fast.items():
        assert view.shape == (3, 3, 24, 24) and view.dtype == torch.uint8
        assert (view.float() - slow[box]).abs().max().item() <= 1.0


def test_several_views_move_by_at_most_half_a_resized_pixel() -> None:
    """On a ramp (grey level = 2 x source column), each view cut from the resized frames
    matches its box cropped and resized on its own to within half a resized pixel of
    the ramp, away from the crop's edges (where a lone crop's filter is cut short)."""
    ramp = (2 * np.arange(120)).astype(np.uint8)
    frames = np.broadcast_to(ramp[None, None, :, None], (2, 90, 120, 3)).copy()
    boxes = [v.box for v in view_boxes(90, 120, 64, 48, Crops.parse("3"))]
    scale = 48 / boxes[0][3]
    cut = cut_boxes(frames, boxes, 48)
    for box in boxes:
        alone = crop_resize(frames, box, 48).float()[..., 2:-2]
        assert (cut[box].float()[..., 2:-2] - alone).abs().max().item() <= 2 * 0.5 / scale + 1
    single = [boxes[1]]  # one box: cropped and resized, the validation pixels exactly
    assert torch.equal(cut_boxes(frames, single, 48)[boxes[1]], crop_resize(frames, boxes[1], 48))


def test_random_crops_are_seeded_inside_the_frame_and_differ() -> None:
    def boxes(seed: int) -> list[tuple[int, int, int, int]]:
        return [
            v.box
            for v in view_boxes(
                48, 64, 32, 24, Crops.parse("random:25"), np.random.default_rng(seed)
            )
        ]

    first = boxes(1)
    assert len(first) == 25 and first == boxes(1) and first != boxes(2)
    assert len(set(first)) > 10
    for top, left, h, w in first:
        assert (h, w) == (36, 36) and 0 <= top <= 12 and 0 <= left <= 28
    with pytest.raises(ValueError, match="generator"):
        view_boxes(48, 64, 32, 24, Crops.parse("random:3"))


def test_flipped_views_mirror_pixels_and_flow_x() -> None:
    frames = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 2), dtype=np.uint8)
    box = (4, 4, 24, 24)
    views = [View(box), View(box, flip=True)]
    # Flow (C = 2): the flip mirrors the picture and negates x (quantised: 255 - x).
    flow = ClipTransform(train=False, modality="flow")
    built = build_views(frames, [np.arange(2)], views, 24, flow)
    raw = torch.from_numpy(frames[:, 4:28, 4:28].astype(np.float32)).permute(3, 0, 1, 2)
    assert torch.allclose(built[0], raw / 127.5 - 1)
    mirrored = raw.flip(-1)
    mirrored[0] = 255 - mirrored[0]
    assert torch.allclose(built[1], mirrored / 127.5 - 1)


def test_every_view_comes_from_one_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    frames = np.random.default_rng(0).integers(0, 256, (30, 48, 64, 3), dtype=np.uint8)
    calls: list[list[int]] = []

    def fake_read(path: Path, pick: Callable[[int, float], list[int]], backend: object) -> Any:
        indices = list(pick(30, 25.0))
        calls.append(indices)
        return frames[indices]

    monkeypatch.setattr(views_module, "read_clip", fake_read)
    spec_a = ViewSpec(ClipSpec(num_frames=4, sampler="dense", frame_stride=2), clips=4,
                      crops=Crops.parse("10"), crop_size=24, short_side=32)  # fmt: skip
    spec_b = ViewSpec(ClipSpec(num_frames=8), clips=2, crops=Crops.parse("3"), crop_size=16,
                      short_side=32)  # fmt: skip
    sample = Sample("v.mp4", 0, "a", 30)
    item = VideoViews([sample], "/data", [spec_a, spec_b])[0]
    assert item["error"] == ""
    assert [tuple(v.shape) for v in item["views"]] == [(40, 3, 4, 24, 24), (6, 3, 8, 16, 16)]
    assert len(calls) == 1  # one decode for 40 + 6 views of two models
    wanted = {int(i) for spec in (spec_a, spec_b) for c in spec.clip_indices(30) for i in c}
    assert calls[0] == sorted(wanted)
    # Views are clip-major: view 10 is clip 1's top-left crop.
    clip1 = spec_a.clip_indices(30)[1]
    expected = build_views(frames, [clip1], view_boxes(48, 64, 32, 24, Crops.parse("10")), 24,
                           ClipTransform(train=False))  # fmt: skip
    assert torch.equal(item["views"][0][10:20], expected)


def test_a_bad_video_is_an_item_with_its_reason(tmp_path: Path) -> None:
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    item = VideoViews([Sample("bad.mp4", 0, "a", 8)], tmp_path, [ViewSpec(ClipSpec(num_frames=2))])[
        0
    ]
    assert item["views"] == [] and item["error"].startswith(str(tmp_path / "bad.mp4"))


def test_view_spec_from_recipe_holds_the_clip_spec_and_keeps_the_cache_key() -> None:
    from vidact.recipe import recipe_from_dict

    recipe = recipe_from_dict(
        {
            "model": {"name": "tsn_resnet50"},
            "data": {"num_frames": 8, "sampler": "segment", "input_size": 112, "modality": "flow"},
            "eval": {"clips": 4, "crops": "random:5", "short_side": 128},
        }
    )
    spec = ViewSpec.from_recipe(recipe.data, recipe.eval)
    assert (
        spec.clip == ClipSpec.from_recipe(recipe.data) == ClipSpec(8, "segment", 1, "flow", "auto")
    )
    assert spec.crops == Crops("random", 5) and spec.num_views == 20 and spec.channels == 2
    assert (spec.crop_size, spec.short_side) == (112, 128)  # crop size: data.input_size
    assert spec.describe() == "4 clips x 5 random crops"
    # The evaluator's cache key has the fields (and values) of the former flat ViewSpec.
    assert spec.key() == {
        "num_frames": 8,
        "sampler": "segment",
        "frame_stride": 1,
        "clips": 4,
        "crops": "random:5",
        "crop_size": 112,
        "short_side": 128,
        "modality": "flow",
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
    }
