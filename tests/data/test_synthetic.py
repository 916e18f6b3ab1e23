"""The synthetic motion dataset: files, determinism, resume, and exact ground-truth flow."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.data.process_scan import HAS_PROC, session_processes, survivors_after
from vidact.data import video
from vidact.data.manifest import load_manifest, read_label_map
from vidact.data.sources.synthetic import SyntheticSpec, make_synthetic_dataset
from vidact.data.synthetic_motion import MOTIONS, render_clip
from vidact.errors import VidactError


def _warp_error(frame_t: np.ndarray, frame_t1: np.ndarray, flow: np.ndarray, margin: int) -> float:
    """Mean |frame_t(p) - frame_t1(p + flow(p))| away from borders (no occlusions here)."""
    size = frame_t.shape[0]
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    map_x, map_y = xs + flow[..., 0], ys + flow[..., 1]
    warped = cv2.remap(frame_t1.astype(np.float32), map_x, map_y, cv2.INTER_LINEAR)
    keep = (map_x >= margin) & (map_x <= size - 1 - margin) & (map_y >= margin)
    keep &= map_y <= size - 1 - margin
    keep[:margin] = keep[-margin:] = False
    keep[:, :margin] = keep[:, -margin:] = False
    return float(np.abs(warped - frame_t.astype(np.float32))[keep].mean())


def test_layout_manifests_and_label_map(synthetic_root: Path) -> None:
    names = read_label_map(synthetic_root / "labels.txt")
    assert names == list(MOTIONS[:4])
    train = load_manifest(synthetic_root / "train.jsonl", num_classes=4)
    val = load_manifest(synthetic_root / "val.jsonl", num_classes=4)
    assert (len(train), len(val)) == (4 * 5, 4 * 1)
    assert {s.label for s in train} == {0, 1, 2, 3}
    assert all(s.gt_flow and (synthetic_root / s.gt_flow).is_file() for s in val)
    info = video.probe(synthetic_root / train[0].path, backend="decord")
    assert (info.num_frames, info.width, info.height) == (8, 32, 32)


def test_same_seed_same_pixels_other_seed_other_pixels(tmp_path: Path) -> None:
    spec = SyntheticSpec(classes=2, videos_per_class=2, frames=4, size=32, seed=7)
    a = make_synthetic_dataset(tmp_path / "a", spec, workers=1)
    b = make_synthetic_dataset(tmp_path / "b", spec, workers=2)
    c = make_synthetic_dataset(tmp_path / "c", SyntheticSpec(**{**spec.__dict__, "seed": 8}), 1)
    for rel in [
        "videos/translate_right/translate_right_0001.mp4",
        "gt_flow/translate_left_0001.npz",
    ]:
        assert (a.out / rel).read_bytes() == (b.out / rel).read_bytes()
    rel = "videos/translate_right/translate_right_0000.mp4"
    assert (a.out / rel).read_bytes() != (c.out / rel).read_bytes()
    assert (a.out / "train.jsonl").read_text() == (b.out / "train.jsonl").read_text()


def test_rerun_resumes_and_rejects_changed_settings(tmp_path: Path) -> None:
    spec = SyntheticSpec(classes=2, videos_per_class=3, frames=4, size=32)
    first = make_synthetic_dataset(tmp_path / "d", spec, workers=1)
    assert (first.written, first.skipped) == (6, 0)
    victim = tmp_path / "d" / "videos" / "translate_left" / "translate_left_0001.mp4"
    original = victim.read_bytes()
    victim.unlink()  # as if the first run was killed before this clip
    again = make_synthetic_dataset(tmp_path / "d", spec, workers=1)
    assert (again.written, again.skipped) == (1, 5)
    assert victim.read_bytes() == original
    assert not list((tmp_path / "d").rglob("*.tmp*"))
    with pytest.raises(VidactError, match="other settings \\(size\\)"):
        make_synthetic_dataset(
            tmp_path / "d", SyntheticSpec(classes=2, videos_per_class=3, frames=4)
        )
    assert json.loads((tmp_path / "d" / "synthetic.json").read_text())["size"] == 32


def test_bad_settings_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(VidactError, match="--classes"):
        make_synthetic_dataset(tmp_path / "x", SyntheticSpec(classes=99))
    with pytest.raises(VidactError, match="--frames"):
        make_synthetic_dataset(tmp_path / "x", SyntheticSpec(frames=1))


@pytest.mark.parametrize("motion", MOTIONS)
def test_ground_truth_flow_warps_rendered_frames(motion: str) -> None:
    """frame_t(p) == frame_{t+1}(p + flow(p)) up to interpolation, for every motion."""
    clip = render_clip(motion, 6, 64, np.random.default_rng(11))
    for t in range(5):
        assert _warp_error(clip.frames[t], clip.frames[t + 1], clip.flow[t], margin=3) < 3.0
    # The test can fail: the flow of a different pair does not warp.
    assert _warp_error(clip.frames[0], clip.frames[1], -clip.flow[0], margin=3) > 6.0


def test_flow_direction_matches_the_class_name() -> None:
    rng = np.random.default_rng(0)
    right = render_clip("translate_right", 3, 64, rng).flow
    up = render_clip("translate_up", 3, 64, rng).flow
    assert (right[..., 0] > 0.5).all() and np.abs(right[..., 1]).max() < 1e-6
    assert (up[..., 1] < -0.5).all()
    cw = render_clip("rotate_cw", 3, 64, rng).flow[0]
    # Clockwise on screen (y down): the flow at the top-left corner region points right
    # relative to the bottom-right region, i.e. the field's curl is positive.
    curl = np.gradient(cw[..., 1], axis=1) - np.gradient(cw[..., 0], axis=0)
    assert curl.mean() > 0
    zoom_in = render_clip("zoom_in", 3, 64, rng).flow[0]
    divergence = np.gradient(zoom_in[..., 0], axis=1) + np.gradient(zoom_in[..., 1], axis=0)
    assert divergence.mean() > 0


def test_stored_flow_warps_decoded_video_frames(tmp_path: Path) -> None:
    """The .npz flow explains the decoded MP4 frames (luminance; chroma is subsampled)."""
    spec = SyntheticSpec(classes=8, videos_per_class=2, frames=6, size=64, seed=3)
    root = make_synthetic_dataset(tmp_path / "gt", spec, workers=1).out
    val = load_manifest(root / "val.jsonl")
    assert len(val) == 8
    for sample in val:
        assert sample.gt_flow is not None
        stored = np.load(root / sample.gt_flow)
        pairs, flow = stored["pairs"], stored["flow"]
        assert list(pairs) == [0, 2, 4]
        assert flow.shape == (3, 64, 64, 2) and flow.dtype == np.float32
        frames = video.read_frames(root / sample.path, range(sample.num_frames))
        gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
        for t, field in zip(pairs, flow, strict=True):
            good = _warp_error(gray[t], gray[t + 1], field, margin=3)
            still = _warp_error(gray[t], gray[t + 1], np.zeros_like(field), margin=3)
            # MPEG-4 coding adds a grey level or two; the flow explains the motion.
            assert good < 4.0 and good < 0.4 * still, (sample.path, t, good, still)


def test_single_frames_do_not_reveal_the_class() -> None:
    """Per-frame colour statistics are spread alike across classes (motion-only classes)."""
    stats = {m: [] for m in MOTIONS[:8]}
    for motion in stats:
        rng = np.random.default_rng(5)
        for _ in range(12):
            frame = render_clip(motion, 4, 32, rng, flow_pairs=[]).frames[3]
            stats[motion].append((frame.mean(), frame.std()))
    means = np.array([np.mean(v, axis=0) for v in stats.values()])
    spread = np.array([np.std(v, axis=0) for v in stats.values()]).mean(axis=0)
    # Class averages differ by less than one within-class standard deviation.
    assert (np.ptp(means, axis=0) < 1.5 * spread).all()


@pytest.mark.skipif(not HAS_PROC, reason="needs /proc")
def test_kill_9_during_generation_leaves_no_writer_process(tmp_path: Path) -> None:
    out = tmp_path / "synthetic"
    child = subprocess.Popen(
        [sys.executable, "-m", "vidact", "prepare", "synthetic", "--out", str(out),
         "--videos-per-class", "400", "--workers", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own session: what /proc says is of this run
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and child.poll() is None:
        if len(list(out.glob("videos/*/*.mp4"))) >= 8:
            break
        time.sleep(0.02)
    assert child.poll() is None and len(session_processes(child.pid)) >= 3  # main + 2 writers
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert survivors_after(child.pid, 5.0) == []
    written = sorted(out.glob("videos/*/*.mp4"))
    time.sleep(0.5)
    assert sorted(out.glob("videos/*/*.mp4")) == written  # nothing writes into OUT any more
