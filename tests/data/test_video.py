"""Video I/O through decord, PyAV and the OpenCV fallback, and on bad files."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import frame_index_of, numbered_frames, write_video
from vidact.data import video
from vidact.errors import VideoReadError

BACKENDS = ["decord", "pyav", "opencv", "auto"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_probe_reports_frames_fps_and_size(numbered_video: Path, backend: str) -> None:
    info = video.probe(numbered_video, backend=backend)
    assert (info.num_frames, info.width, info.height) == (30, 64, 48)
    assert info.fps == pytest.approx(25.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_read_frames_returns_the_requested_indices_in_order(
    numbered_video: Path, backend: str
) -> None:
    indices = [17, 3, 3, 29, 0]
    frames = video.read_frames(numbered_video, indices, backend=backend)
    assert frames.shape == (5, 48, 64, 3) and frames.dtype == np.uint8
    assert [frame_index_of(f) for f in frames] == indices


@pytest.mark.parametrize("backend", BACKENDS)
def test_probe_and_read_is_probe_plus_read_frames_in_one_open(
    numbered_video: Path, backend: str
) -> None:
    info, frames = video.probe_and_read(numbered_video, lambda n: [n - 1, 17], backend=backend)
    probed = video.probe(numbered_video, backend=backend)
    assert (info.num_frames, info.width, info.height) == (30, 64, 48)
    assert info.fps == pytest.approx(probed.fps)
    assert [frame_index_of(f) for f in frames] == [29, 17]
    with pytest.raises(VideoReadError, match="asked of a video of 30"):
        video.probe_and_read(numbered_video, lambda n: [n], backend=backend)


def test_probe_and_read_can_snap_to_key_frames(numbered_video: Path) -> None:
    # OpenCV's mp4v writer puts a key frame every 12 frames: 0, 12, 24
    _, frames = video.probe_and_read(
        numbered_video, lambda n: [29, 17, 12, 3], backend="decord", key_frames=True
    )
    assert [frame_index_of(f) for f in frames] == [24, 12, 12, 0]
    _, frames = video.probe_and_read(
        numbered_video, lambda n: [29, 17, 12, 3], backend="pyav", key_frames=True
    )
    assert [frame_index_of(f) for f in frames] == [24, 12, 12, 0]
    _, frames = video.probe_and_read(  # OpenCV knows no key frames: the picks as they are
        numbered_video, lambda n: [29, 17], backend="opencv", key_frames=True
    )
    assert [frame_index_of(f) for f in frames] == [29, 17]


def test_decord_and_opencv_decode_the_same_pixels(numbered_video: Path) -> None:
    a = video.read_frames(numbered_video, [2, 11, 25], backend="decord").astype(int)
    b = video.read_frames(numbered_video, [2, 11, 25], backend="opencv").astype(int)
    assert np.abs(a - b).mean() < 2.0  # same codec, same frames; colour conversion may differ


def test_environment_variable_forces_the_backend(
    numbered_video: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VIDACT_VIDEO_BACKEND", "opencv")
    assert video.probe(numbered_video).backend == "opencv"
    monkeypatch.setenv("VIDACT_VIDEO_BACKEND", "nonsense")
    with pytest.raises(VideoReadError, match="unknown backend"):
        video.probe(numbered_video)


def test_auto_falls_back_to_opencv_when_decord_fails(
    numbered_video: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(path: Path) -> object:
        raise RuntimeError("simulated decord failure")

    monkeypatch.setattr(video, "_open_decord", broken)
    frames = video.read_frames(numbered_video, [5, 6], backend="auto")
    assert [frame_index_of(f) for f in frames] == [5, 6]
    with pytest.raises(VideoReadError, match="simulated decord failure"):
        video.read_frames(numbered_video, [5], backend="decord")


def test_opencv_reads_only_up_to_the_last_index(
    numbered_video: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A few early indices decode a few frames, not the whole video."""
    grabs = {"count": 0}
    real = cv2.VideoCapture

    class CountingCapture:
        def __init__(self, *args: object) -> None:
            self._inner = real(*args)

        def grab(self) -> bool:
            grabs["count"] += 1
            return bool(self._inner.grab())

        def read(self) -> tuple[bool, np.ndarray]:
            grabs["count"] += 1
            return self._inner.read()

        def __getattr__(self, name: str) -> object:
            return getattr(self._inner, name)

    monkeypatch.setattr(video.cv2, "VideoCapture", CountingCapture)
    video.read_frames(numbered_video, [1, 3], backend="opencv")
    assert grabs["count"] == 4  # frames 0..3


def test_opencv_never_seeks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CAP_PROP_POS_FRAMES seeks can land early (opencv/opencv#4890): OpenCV reads forward."""
    path = write_video(tmp_path / "long.mp4", numbered_frames(60, 32, 48))
    real = cv2.VideoCapture
    positions: list[float] = []

    class NoSeekCapture:
        def __init__(self, *args: object) -> None:
            self._inner = real(*args)

        def set(self, prop: int, value: float) -> bool:
            positions.append(value)
            return bool(self._inner.set(prop, value))

        def __getattr__(self, name: str) -> object:
            return getattr(self._inner, name)

    monkeypatch.setattr(video.cv2, "VideoCapture", NoSeekCapture)
    frames = video.read_frames(path, [58, 0, 58], backend="opencv")
    assert [frame_index_of(f) for f in frames] == [58, 0, 58]
    assert positions == []


def test_frame_folder_reads_through_the_same_interface(tmp_path: Path) -> None:
    source = numbered_frames(12)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(source):
        cv2.imwrite(str(folder / f"img_{i + 1:05d}.jpg"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    info = video.probe(folder)
    assert (info.num_frames, info.width, info.height, info.backend) == (12, 64, 48, "frames")
    frames = video.read_frames(folder, [11, 0, 4])
    assert [frame_index_of(f) for f in frames] == [11, 0, 4]
    info, frames = video.probe_and_read(folder, lambda n: [n - 1, 4])
    assert info.num_frames == 12 and [frame_index_of(f) for f in frames] == [11, 4]


def test_flow_folder_reads_x_and_y_planes(tmp_path: Path) -> None:
    folder = tmp_path / "flow"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"x_{i + 1:05d}.jpg"), np.full((8, 8), 40 * i, np.uint8))
        cv2.imwrite(str(folder / f"y_{i + 1:05d}.jpg"), np.full((8, 8), 200, np.uint8))
    assert video.count_flow_frames(folder) == 3
    flow = video.read_flow_frames(folder, [2, 0])
    assert flow.shape == (2, 8, 8, 2)
    assert abs(int(flow[0, 4, 4, 0]) - 80) <= 2 and abs(int(flow[1, 4, 4, 1]) - 200) <= 2


def test_flow_pairs_are_the_planes_pixel_for_pixel_in_the_order_asked(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    planes = rng.integers(0, 256, (5, 2, 6, 10), dtype=np.uint8)  # lossless PNGs of noise
    for i, (x, y) in enumerate(planes):
        cv2.imwrite(str(tmp_path / f"x_{i + 1:05d}.png"), x)
        cv2.imwrite(str(tmp_path / f"y_{i + 1:05d}.png"), y)
    wanted = [3, 0, 3, 4]  # out of order and repeated
    flow = video.read_flow_frames(tmp_path, wanted, ("x_{:05d}.png", "y_{:05d}.png"))
    assert flow.shape == (4, 6, 10, 2) and flow.flags.c_contiguous
    assert np.array_equal(flow, planes[wanted].transpose(0, 2, 3, 1))
    cv2.imwrite(str(tmp_path / "y_00002.png"), planes[1, 1, :4])  # one y frame cut short
    with pytest.raises(VideoReadError, match="differ in size"):
        video.read_flow_frames(tmp_path, [0, 1], ("x_{:05d}.png", "y_{:05d}.png"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_missing_empty_text_and_truncated_files_raise_one_error_type(
    tmp_path: Path, numbered_video: Path, backend: str
) -> None:
    missing = tmp_path / "missing.mp4"
    empty = tmp_path / "empty.mp4"
    empty.touch()
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n")
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(numbered_video.read_bytes()[: numbered_video.stat().st_size // 2])
    for path, reason in [
        (missing, "not found"),
        (empty, "empty"),
        (text, "not a readable video|could not read"),
        (truncated, "not a readable video|could not read"),
    ]:
        with pytest.raises(VideoReadError, match=reason) as caught:
            video.read_frames(path, [0, 1], backend=backend)
        assert caught.value.path == str(path)
        assert caught.value.reason
        with pytest.raises(VideoReadError):
            video.probe(path, backend=backend)


def test_truncated_avi_fails_on_the_missing_frames_not_before(tmp_path: Path) -> None:
    """An AVI cut short keeps its early frames readable; later ones raise VideoReadError."""
    full = write_video(tmp_path / "full.avi", numbered_frames(40), fourcc="MJPG")
    cut = tmp_path / "cut.avi"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 3])
    frames = video.read_frames(cut, [0, 2], backend="opencv")
    assert [frame_index_of(f) for f in frames] == [0, 2]
    with pytest.raises(VideoReadError, match="could not be decoded|has"):
        video.read_frames(cut, [39], backend="auto")


def test_index_past_the_end_raises(numbered_video: Path) -> None:
    for backend in BACKENDS:
        with pytest.raises(VideoReadError):
            video.read_frames(numbered_video, [30], backend=backend)
