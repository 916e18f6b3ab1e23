"""prepare --flow tvl1: TV-L1 flow folders beside the frames, resumable, read back by training."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from tests.conftest import write_video
from tests.data.fake_datasets import image_count, make_sthv1, read_jsonl
from vidact.cli import app
from vidact.data.dataset import ClipDataset, ClipSpec
from vidact.data.manifest import load_manifest
from vidact.data.prepare.estimate import estimate_output_bytes
from vidact.data.prepare.options import PrepareOptions
from vidact.data.prepare.outputs import PrepareSummary, check_flow_bound, read_flow_info
from vidact.data.prepare.pipeline import prepare
from vidact.data.transforms import ClipTransform
from vidact.data.video import count_flow_frames, read_flow_frames
from vidact.errors import VidactError
from vidact.flow import dequantize_flow
from vidact.recipe import Recipe

SIZE = 32
SHIFT = {"left": -2, "right": 2}  # px per frame, along x
FRAMES = (6, 7)  # frames of clip0, clip1 of each class
runner = CliRunner()


def _texture() -> np.ndarray:
    rng = np.random.default_rng(0)
    return cv2.GaussianBlur(rng.integers(0, 255, (3 * SIZE, 3 * SIZE), np.uint8), (5, 5), 1.5)


@pytest.fixture(scope="module")
def translations(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Class folders `left`/`right`: a texture moving 2 px a frame, 32x32, 6 and 7 frames."""
    root = tmp_path_factory.mktemp("flow") / "videos"
    texture = _texture()
    for name, dx in SHIFT.items():
        for clip, count in enumerate(FRAMES):
            gray = np.stack([np.roll(texture, dx * t, axis=1) for t in range(count)])
            crop = gray[:, SIZE : 2 * SIZE, SIZE : 2 * SIZE]
            write_video(root / name / f"clip{clip}.mp4", np.repeat(crop[..., None], 3, axis=-1))
    return root


def _mean_flow(folder: Path, bound: float = 20.0) -> np.ndarray:
    """Mean (x, y) flow in px over the inner pixels of every pair of a flow folder."""
    count = count_flow_frames(folder)
    quantised = read_flow_frames(folder, range(count))
    flow = dequantize_flow(quantised[..., 0], quantised[..., 1], bound)
    return flow[:, 6:-6, 6:-6].reshape(-1, 2).mean(axis=0)


def _prepare(videos: Path, out: Path, flow_bound: float = 20.0) -> PrepareSummary:
    return prepare(
        "folder", videos, None, out, short_side=SIZE, workers=0, flow="tvl1",
        flow_backend="opencv", flow_bound=flow_bound,
    )  # fmt: skip


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in sorted(folder.rglob("*.jpg"))}


def test_prepare_frames_with_flow_then_resume_and_load(
    translations: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("vidact.data.prepare.frames.FLOW_CHUNK", 2)  # 6-7 frames: 3-4 chunks
    out = tmp_path / "out"
    summary = _prepare(translations, out)
    assert (summary.done, summary.failed, summary.flow_backend) == (4, 0, "opencv")
    assert summary.flow_pairs_written == 2 * sum(n - 1 for n in FRAMES)
    assert 0 < summary.estimated_flow_bytes < summary.estimated_bytes

    samples = load_manifest(out / "train.jsonl", num_classes=2)
    assert len(samples) == 4
    flow_bytes = 0
    for sample in samples:
        key = sample.path.removeprefix("frames/")
        assert sample.flow == f"flow/{key}"
        folder = out / sample.flow
        assert image_count(out / sample.path) == sample.num_frames
        assert count_flow_frames(folder) == sample.num_frames - 1
        assert sorted(p.name for p in folder.iterdir())[-1] == f"y_{sample.num_frames - 1:05d}.jpg"
        flow_x, flow_y = _mean_flow(folder)
        # A 2 px shift a frame, quantised in steps of 40/255 px (and through two codecs).
        assert flow_x == pytest.approx(SHIFT[sample.label_name], abs=0.3), key
        assert abs(flow_y) < 0.3, key
        flow_bytes += sum(p.stat().st_size for p in folder.iterdir())
    # The estimate measured one real pair per video: honest within a factor of two.
    assert 0.5 < summary.estimated_flow_bytes / flow_bytes < 2.0

    info = read_flow_info(out)
    assert info is not None and info["bound"] == 20.0
    assert info["templates"] == ["x_{:05d}.jpg", "y_{:05d}.jpg"]
    lines = (out / "train_flow.txt").read_text().splitlines()
    assert "flow/right/clip1 6 1" in lines and len(lines) == 4
    done = read_jsonl(out / ".prepare/done-all.jsonl")
    assert {str(r["key"]): r["flow"] for r in done}["left/clip0"] == FRAMES[0] - 1

    # Re-run: everything is skipped and nothing is rewritten.
    before = _mtimes(out / "flow")
    again = _prepare(translations, out)
    assert (again.done, again.skipped, again.flow_pairs_written) == (0, 4, 0)
    assert _mtimes(out / "flow") == before

    # Training reads it: flow clips (2, T, S, S), and RGB + flow stacked (5, T, S, S).
    transform = ClipTransform(train=False, input_size=24, short_side=SIZE, modality="flow")
    spec = ClipSpec(num_frames=4, sampler="consecutive", modality="flow")
    right = [s for s in samples if s.label_name == "right"]
    dataset = ClipDataset(right, out, spec, transform)
    clip = dataset[0]["clip"]
    assert clip.shape == (2, 4, 24, 24)
    assert float(clip[0].mean()) == pytest.approx(2 / 20, abs=0.03)  # q / 127.5 - 1 = f / bound
    both = ClipDataset(right, out, ClipSpec(num_frames=4, modality="rgb+flow"), transform)
    assert both[1]["clip"].shape == (5, 4, 24, 24)


def test_resume_redoes_a_video_without_flow_and_refuses_other_flow_settings(
    translations: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    _prepare(translations, out)
    lost = out / "flow/left/clip1"
    for path in lost.iterdir():
        path.unlink()
    lost.rmdir()
    redo = _prepare(translations, out)
    assert (redo.done, redo.skipped, redo.flow_pairs_written) == (1, 3, FRAMES[1] - 1)
    assert count_flow_frames(lost) == FRAMES[1] - 1
    assert not [p for p in (out / "flow/left").iterdir() if p.name.startswith(".")]

    with pytest.raises(VidactError, match="flow_bound 20.0 -> 10.0"):
        _prepare(translations, out, flow_bound=10.0)
    with pytest.raises(VidactError, match="flow 'tvl1' -> None"):
        prepare("folder", translations, None, out, short_side=SIZE, workers=0)


def test_mode_none_in_a_pool_with_torch_and_another_bound(
    translations: Path, tmp_path: Path
) -> None:
    """--mode none still writes flow (from the original videos), in worker processes."""
    out = tmp_path / "raw"
    summary = prepare(
        "folder", translations, None, out, mode="none", short_side=SIZE, workers=2,
        flow="tvl1", flow_backend="torch", flow_bound=10.0,
    )  # fmt: skip
    assert (summary.done, summary.flow_backend) == (4, "torch")
    assert summary.flow_pairs_written == 2 * sum(n - 1 for n in FRAMES)
    assert json.loads((out / "prepare.json").read_text())["flow_bound"] == 10.0
    for sample in load_manifest(out / "train.jsonl"):
        assert (
            sample.path.startswith("../")
            and (out / sample.path).resolve()
            == (translations / sample.path.split("/videos/")[-1]).resolve()
        )
        assert count_flow_frames(out / str(sample.flow)) == sample.num_frames - 1
        flow_x, flow_y = _mean_flow(out / str(sample.flow), bound=10.0)
        assert flow_x == pytest.approx(SHIFT[sample.label_name], abs=0.3)
        assert abs(flow_y) < 0.3
    check_flow_bound(tmp_path, 20.0)  # no flow.json: nothing to check

    # Training checks the recipe's data.flow_bound against flow.json before reading flow.
    import tests.engine.tiny  # noqa: F401  (registers tiny_test_net)
    from tests.engine.test_trainer import make_recipe
    from vidact.engine.trainer import build_datasets

    def recipe(bound: float) -> Recipe:
        data = {"modality": "flow", "flow_bound": bound, "val_manifest": "train.jsonl"}
        return make_recipe(out, tmp_path / "runs", **{f"data__{k}": v for k, v in data.items()})

    with pytest.raises(VidactError, match="data.flow_bound is 20; set data.flow_bound: 10"):
        build_datasets(recipe(20.0), out, 2)
    train, _ = build_datasets(recipe(10.0), out, 2)
    assert train[(0, 0)]["clip"].shape == (2, 3, 24, 24)


def test_a_single_frame_video_fails_cleanly(translations: Path, tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    write_video(videos / "still" / "one.mp4", np.full((1, SIZE, SIZE, 3), 90, np.uint8))
    os.symlink(translations / "right" / "clip0.mp4", videos / "still" / "moving.mp4")
    out = tmp_path / "out"
    summary = _prepare(videos, out)
    assert (summary.done, summary.failed) == (1, 1)
    (failure,) = read_jsonl(out / "failures.jsonl")
    assert failure["key"] == "still/one" and "needs at least 2" in str(failure["reason"])
    assert sorted(os.listdir(out / "frames/still")) == ["moving"]  # no debris, no half output
    assert sorted(os.listdir(out / "flow/still")) == ["moving"]


def test_sthv1_frame_folders_copied_and_resized_get_flow(tmp_path: Path) -> None:
    """Frame-folder sources: flow from the copied JPEGs (no resize) and the resized ones."""
    data = make_sthv1(tmp_path / "s1", {"train": 1})
    for short_side, out in ((256, tmp_path / "copied"), (32, tmp_path / "resized")):
        summary = prepare(
            "sthv1", data.videos, data.annotations, out, short_side=short_side, workers=0,
            flow="tvl1", flow_backend="opencv",
        )  # fmt: skip
        assert (summary.done, summary.failed) == (3, 0)
        for sample in load_manifest(out / "train.jsonl"):
            assert sample.flow is not None
            assert count_flow_frames(out / sample.flow) == sample.num_frames - 1
            flow = read_flow_frames(out / sample.flow, [0])
            assert flow.shape[1:] == (
                *cv2.imread(str(out / sample.path / "img_00001.jpg")).shape[:2],
                2,
            )


def test_estimate_counts_flow(translations: Path, tmp_path: Path) -> None:
    from vidact.data.prepare.pipeline import _jobs
    from vidact.data.sources.folder import load_folder

    jobs = _jobs(load_folder(translations))
    frames_only = estimate_output_bytes(jobs, tmp_path, PrepareOptions(short_side=SIZE))
    with_flow = estimate_output_bytes(
        jobs, tmp_path, PrepareOptions(short_side=SIZE, flow="tvl1", flow_backend="opencv")
    )
    assert frames_only.flow_bytes == 0 and with_flow.flow_bytes > 0
    assert with_flow.bytes == pytest.approx(frames_only.bytes + with_flow.flow_bytes, rel=0.01)
    flow_alone = estimate_output_bytes(
        jobs, tmp_path, PrepareOptions(mode="none", flow="tvl1", flow_backend="opencv")
    )
    assert flow_alone.bytes == flow_alone.flow_bytes == pytest.approx(with_flow.flow_bytes, rel=0.3)


def test_cli_videos_mode_with_flow_and_user_errors(translations: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["prepare", "folder", "--videos", str(translations), "--out", str(out)]
    args += ["--short-side", str(SIZE), "--workers", "0", "--mode", "videos"]
    result = runner.invoke(app, [*args, "--flow", "tvl1", "--flow-backend", "opencv"])
    assert result.exit_code == 0, result.output
    assert "flow pairs written" in result.stdout and "22 (tvl1, opencv" in result.stdout
    for sample in load_manifest(out / "train.jsonl"):
        assert sample.path.endswith(".mp4") and sample.flow is not None
        assert count_flow_frames(out / sample.flow) == sample.num_frames - 1

    bad = runner.invoke(app, [*args, "--flow", "farneback"])
    assert bad.exit_code == 2 and "farneback" in bad.output
    negative = runner.invoke(
        app, ["prepare", "folder", "--videos", str(translations), "--out", str(tmp_path / "n"),
              "--flow", "tvl1", "--flow-bound", "0"],
    )  # fmt: skip
    assert negative.exit_code == 2 and "--flow-bound must be a positive" in negative.output
    cuda = runner.invoke(
        app, ["prepare", "folder", "--videos", str(translations), "--out", str(tmp_path / "c"),
              "--flow", "tvl1", "--flow-backend", "opencv-cuda"],
    )  # fmt: skip
    from vidact.flow.backends import opencv_cuda_available

    if not opencv_cuda_available():
        assert cuda.exit_code == 2 and "'opencv-cuda' is not available" in cuda.output
        assert not (tmp_path / "c").exists()  # refused before anything is written
