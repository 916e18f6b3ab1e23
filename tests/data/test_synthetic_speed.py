"""The speed task (`vidact prepare synthetic --task speed`): its classes differ by speed only.

- every frame is drawn from the same appearance distribution whatever the class (and the
  same statistics do tell the classes apart once two frames are compared);
- the target moves by exactly the class speed per frame, measured on the rendered pixels;
- the stored flow explains the frames; same seed, same pixels; user errors are one line.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from vidact.cli import app
from vidact.data.manifest import load_manifest, read_label_map
from vidact.data.sources.synthetic import (
    SPEC_FILE,
    SyntheticSpec,
    clip_rng,
    make_synthetic_dataset,
    parse_speeds,
)
from vidact.data.synthetic_speed import render_speed_clip
from vidact.errors import VidactError

SPEC = SyntheticSpec(task="speed", classes=3, frames=4, size=32, noise=0.03, videos_per_class=4)


def _shifted(frame: np.ndarray, d: tuple[float, float]) -> np.ndarray:
    """frame(p + d) with bilinear resampling and wrap-around."""
    size = frame.shape[0]
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    return cv2.remap(
        frame,
        xs + np.float32(d[0]),
        ys + np.float32(d[1]),
        interpolation=cv2.INTER_CUBIC,
        borderMode=cv2.BORDER_WRAP,
    )


def _best_shift(f0: np.ndarray, f1: np.ndarray, where: np.ndarray, reach: float) -> np.ndarray:
    """The displacement d minimising |f0(p) - f1(p + d)| over `where`: a brute-force search
    on a 0.2 px grid within `reach` px, then on a 0.01 px grid around the best."""
    best = np.zeros(2)
    for step, radius in ((0.2, reach), (0.01, 0.2)):
        offsets = np.arange(-radius, radius + step / 2, step)
        errors = {
            (dx, dy): float(np.abs(f0 - _shifted(f1, (dx, dy)))[where].mean())
            for dx in best[0] + offsets
            for dy in best[1] + offsets
        }
        best = np.array(min(errors, key=errors.__getitem__))
    return best


@pytest.mark.parametrize("speed", [0.5, 1.0, 2.0])
def test_the_object_moves_by_the_class_speed_per_frame(speed: float) -> None:
    """Measured on the pixels (no noise): the shift that best maps the last frame back onto
    the first over the object is 5 x its velocity, of norm `speed`, as the stored flow says.
    (Over 5 frames the interpolation error of the measurement, ~0.08 px, is 0.016 px/frame.)"""
    clip = render_speed_clip(speed, 6, 32, np.random.default_rng(2), contrast=0.2)
    moving = np.linalg.norm(clip.flow, axis=-1) > 0
    velocity = clip.flow[0][moving[0]][0]
    for t in range(5):
        assert moving[t].sum() >= 25  # a 6x6 square, half-covered border pixels excluded
        assert np.allclose(clip.flow[t][moving[t]], velocity)  # one rigid, constant velocity
    assert math.isclose(float(np.linalg.norm(velocity)), speed, rel_tol=1e-5)
    grey = clip.frames[..., 0].astype(np.float32)
    interior = cv2.erode(moving[0].astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    measured = _best_shift(grey[0], grey[5], interior, reach=5 * max(speed, 1.0) + 1) / 5
    assert np.abs(measured - velocity).max() <= 0.03, (measured, velocity)


def _warp_error(f0: np.ndarray, f1: np.ndarray, flow: np.ndarray, where: np.ndarray) -> float:
    """Median |f0(p) - f1(p + flow(p))| over `where` (bilinear, wrap-around)."""
    ys, xs = np.mgrid[0 : f0.shape[0], 0 : f0.shape[1]].astype(np.float32)
    warped = cv2.remap(
        f1,
        xs + flow[..., 0],
        ys + flow[..., 1],
        interpolation=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_WRAP,
    )
    return float(np.median(np.abs(warped - f0)[where]))


@pytest.mark.parametrize("distractors", [0, 2])
def test_the_stored_flow_explains_the_frames(distractors: int) -> None:
    """frame_t(p) == frame_{t+1}(p + flow(p)) up to interpolation (median over the moving
    squares: a square's trailing edge uncovers what it hid); no flow or twice it does not."""
    clip = render_speed_clip(1.0, 6, 32, np.random.default_rng(4), distractors=distractors)
    for t in range(4):
        f0, f1 = (clip.frames[k, ..., 0].astype(np.float32) for k in (t, t + 1))
        moving = np.linalg.norm(clip.flow[t], axis=-1) > 0
        inside = cv2.erode(moving.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
        good = _warp_error(f0, f1, clip.flow[t], inside)
        assert good < 2.0
        assert _warp_error(f0, f1, 0 * clip.flow[t], inside) > 3 * good
        assert _warp_error(f0, f1, 2 * clip.flow[t], inside) > 3 * good
        # Away from the squares of both frames (2 px for the soft edges), nothing changes.
        squares = (np.linalg.norm(clip.flow[t : t + 2], axis=-1) > 0).any(0).astype(np.uint8)
        around = cv2.dilate(np.pad(squares, 2, mode="wrap"), np.ones((5, 5), np.uint8))
        background = around[2:-2, 2:-2] == 0  # the squares wrap around: so does the margin
        assert background.sum() > 300 and np.array_equal(f0[background], f1[background])


def _frame_statistics(frames: np.ndarray) -> np.ndarray:
    """Per frame: mean, standard deviation, mean squared gradient (sharpness), 2nd moment
    of the histogram's tails -> (T, 4)."""
    grey = frames[..., 0].astype(np.float64)
    gx, gy = np.diff(grey, axis=2), np.diff(grey, axis=1)
    centred = grey - grey.mean((1, 2), keepdims=True)
    return np.stack(
        [
            grey.mean((1, 2)),
            grey.std((1, 2)),
            (gx**2).mean((1, 2)) + (gy**2).mean((1, 2)),
            (centred**4).mean((1, 2)) / grey.var((1, 2)) ** 2,
        ],
        -1,
    )


def _class_gap(values: dict[int, np.ndarray]) -> np.ndarray:
    """Largest difference between class means over its standard error, per statistic."""
    means = np.array([v.mean(0) for v in values.values()])
    errors = np.array([v.std(0, ddof=1) / math.sqrt(len(v)) for v in values.values()])
    return np.ptp(means, axis=0) / np.sqrt((errors**2).max(0) * 2)


@pytest.mark.parametrize("distractors", [0, 1])
def test_single_frames_are_drawn_alike_for_every_class(distractors: int) -> None:
    """Per-frame statistics of the three classes agree within sampling error (z < 4), at
    every frame index; the frame-to-frame change, measured the same way, does not (without
    distractors, whose class-independent motion hides the object's in this summary)."""
    spec = replace(SPEC, distractors=distractors)
    single: dict[int, list[np.ndarray]] = {k: [] for k in range(3)}
    change: dict[int, list[float]] = {k: [] for k in range(3)}
    for label in range(3):
        for index in range(80):
            frames = spec.render(label, clip_rng(0, label, index), []).frames
            single[label].append(_frame_statistics(frames))
            change[label].append(
                float(np.abs(np.diff(frames[..., 0].astype(float), axis=0)).mean())
            )
    per_frame = {k: np.stack(v) for k, v in single.items()}  # (clips, T, 4)
    for t in range(spec.frames):
        gap = _class_gap({k: v[:, t] for k, v in per_frame.items()})
        assert (gap < 4.0).all(), (t, gap)
    motion_gap = _class_gap({k: np.array(v)[:, None] for k, v in change.items()})
    assert distractors or motion_gap[0] > 10.0  # the test tells the classes apart from 2 frames


def test_same_seed_same_pixels_and_directions_vary() -> None:
    a = SPEC.render(1, clip_rng(5, 1, 3), [0])
    b = SPEC.render(1, clip_rng(5, 1, 3), [0])
    c = SPEC.render(1, clip_rng(6, 1, 3), [0])
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.flow, b.flow)
    assert not np.array_equal(a.frames, c.frames)
    angles = []
    for index in range(40):
        flow = SPEC.render(0, clip_rng(0, 0, index), [0]).flow[0]
        vx, vy = flow[np.linalg.norm(flow, axis=-1) > 0][0]
        angles.append(math.atan2(vy, vx))
    # Directions cover the circle: every quadrant is used.
    assert len({int((a + math.pi) // (math.pi / 2)) for a in angles}) == 4


def test_dataset_files_labels_and_resume(tmp_path: Path) -> None:
    out = tmp_path / "speed"
    summary = make_synthetic_dataset(out, SPEC, workers=1)
    assert summary.classes == ["speed_0.5px", "speed_1px", "speed_2px"]
    assert read_label_map(out / "labels.txt") == summary.classes
    assert len(load_manifest(out / "train.jsonl")) == 9
    stored = np.load(out / load_manifest(out / "val.jsonl")[2].gt_flow)  # type: ignore[operator]
    speeds = np.linalg.norm(stored["flow"], axis=-1)
    assert np.isclose(speeds.max(), 2.0) and set(np.round(np.unique(speeds), 4)) == {0.0, 2.0}
    assert json.loads((out / SPEC_FILE).read_text())["speeds"] == [0.5, 1.0, 2.0]
    again = make_synthetic_dataset(out, SPEC, workers=1)  # tuples read back as lists
    assert (again.written, again.skipped) == (0, 12)
    with pytest.raises(VidactError, match=r"other settings \(noise\)"):
        make_synthetic_dataset(out, replace(SPEC, noise=0.0), workers=1)


def test_folders_written_before_the_speed_task_still_resume(tmp_path: Path) -> None:
    spec = SyntheticSpec(classes=2, videos_per_class=2, frames=3, size=32)
    make_synthetic_dataset(tmp_path / "old", spec, workers=1)
    path = tmp_path / "old" / SPEC_FILE
    old_keys = ["classes", "videos_per_class", "frames", "size", "seed", "val_fraction", "fps"]
    old = {k: v for k, v in asdict(spec).items() if k in [*old_keys, "gt_flow_pairs"]}
    path.write_text(json.dumps(old))
    assert make_synthetic_dataset(tmp_path / "old", spec, workers=1).skipped == 4


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"task": "camera", "speeds": (1.0, 2.0)}, "--speeds applies to --task speed only"),
        ({"task": "camera", "distractors": 2}, "--distractors applies to --task speed only"),
        ({"classes": 2}, r"--classes must equal the number of --speeds \(3\)"),
        ({"speeds": (1.0, 1.0, 2.0)}, "--speeds must be distinct"),
        ({"speeds": (0.5, 1.0, 9.0)}, "between 0 and 8 px"),
        ({"object_size": 9}, "--object-size"),
        ({"noise": 2.0}, "--noise"),
        ({"task": "zoom"}, "--task must be one of camera, speed"),
    ],
)
def test_bad_settings_are_user_errors(changes: dict[str, object], message: str) -> None:
    with pytest.raises(VidactError, match=message):
        replace(SPEC, **changes).validate()  # type: ignore[arg-type]


def test_speeds_option_parses_and_rejects_garbage() -> None:
    assert parse_speeds("0.5,1,2") == (0.5, 1.0, 2.0)
    with pytest.raises(VidactError, match="--speeds '1,fast'"):
        parse_speeds("1,fast")


def test_prepare_synthetic_task_speed_command(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    args = ["prepare", "synthetic", "--out", str(out), "--task", "speed", "--speeds", "1,2"]
    args += ["--videos-per-class", "3", "--frames", "3", "--size", "32", "--noise", "0.02"]
    args += ["--distractors", "1", "--workers", "0"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "2: speed_1px, speed_2px" in result.stdout
    spec = json.loads((out / SPEC_FILE).read_text())
    assert (spec["task"], spec["classes"], spec["distractors"]) == ("speed", 2, 1)
    assert len(list(out.glob("videos/speed_2px/*.mp4"))) == 3
