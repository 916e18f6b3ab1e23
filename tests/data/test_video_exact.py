"""Every backend returns exactly the frames asked for, under random access.

The videos encode each frame's index in its pixels (tests/data/numbered_videos.py), in
codecs with B-frames and with a variable frame rate. For every backend, random and
repeated indices must come back (1) as the frames they name, decoded back from their
pixels, and (2) bit-exact to a sequential decode by the same decoder: the literal slow
reference, written here with each library's plain forward-reading API.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from tests.conftest import write_video
from tests.data.numbered_videos import KINDS, index_of, numbered_frames, write_kind
from vidact.data import video, video_pyav
from vidact.errors import VideoReadError

FILES = [*KINDS, "mp4v_opencv"]
COUNT = 100


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("exact")
    paths = {kind: write_kind(folder / f"{kind}.mp4", kind, COUNT) for kind in KINDS}
    paths["mp4v_opencv"] = write_video(folder / "mp4v.mp4", numbered_frames(COUNT))
    return paths


def sequential_pyav(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def sequential_decord(path: Path) -> np.ndarray:
    import decord

    reader = decord.VideoReader(str(path), num_threads=1)
    return np.stack([reader.next().asnumpy() for _ in range(len(reader))])


def sequential_opencv(path: Path) -> np.ndarray:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    return np.stack(frames)


SEQUENTIAL: dict[str, Callable[[Path], np.ndarray]] = {
    "decord": sequential_decord,
    "pyav": sequential_pyav,
    "opencv": sequential_opencv,
}
# decord 0.6.0 indexes key frames in decode order on MPEG-4 Part 2 with B-frames and returns
# frames two places late after a seek (dmlc/decord#365); "auto" detects it and uses PyAV.
DECORD_INEXACT = {"mpeg4_bframes"}


def reading_backend(path: Path, backend: str) -> str:
    """The backend that reads frames of `path` (probe alone needs no exact index)."""
    return video.probe_and_read(path, lambda n: [n - 1], backend=backend)[0].backend


def index_sets(seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    sets = [rng.integers(0, COUNT, 12).tolist() for _ in range(6)]  # random, with repeats
    sets.append([COUNT - 1, 0, 50, 50, 13, 12, 12, COUNT - 1])  # backwards and repeated
    sets.append(list(range(40, 56)))  # a consecutive clip across a key frame
    sets.append([11, 12, 13, 23, 24, 25, 35, 36])  # around the key frames (g = 12)
    return sets


def case(backend: str, kind: str) -> object:
    if backend == "decord" and kind in DECORD_INEXACT:
        return pytest.param(
            backend, kind, marks=pytest.mark.xfail(strict=True, reason="dmlc/decord#365")
        )
    return pytest.param(backend, kind)


CASES = [case(b, k) for b in ("decord", "pyav", "opencv", "auto") for k in FILES]


@pytest.mark.parametrize(("backend", "kind"), CASES)
def test_random_and_repeated_indices_are_exact(
    videos: dict[str, Path], backend: str, kind: str
) -> None:
    path = videos[kind]
    if backend == "decord" and not video.decord_available():
        pytest.skip("decord not installed")
    chosen = reading_backend(path, backend)
    reference = SEQUENTIAL[chosen](path)
    assert [index_of(f) for f in reference] == list(range(COUNT))  # the pattern survives coding
    for indices in index_sets(seed=len(kind)):
        frames = video.read_frames(path, indices, backend=backend)
        assert [index_of(f) for f in frames] == indices
        np.testing.assert_array_equal(frames, reference[indices])


def test_auto_reads_mpeg4_bframes_with_pyav_and_others_with_decord(
    videos: dict[str, Path],
) -> None:
    if not video.decord_available():
        pytest.skip("decord not installed")
    chosen = {kind: reading_backend(path, "auto") for kind, path in videos.items()}
    assert chosen == {k: "pyav" if k in DECORD_INEXACT else "decord" for k in FILES}


@pytest.mark.parametrize("kind", FILES)
def test_the_decord_check_agrees_with_what_decord_returns(
    videos: dict[str, Path], kind: str
) -> None:
    """The key-frame check flags a file exactly when decord's random access is wrong."""
    if not video.decord_available():
        pytest.skip("decord not installed")
    path = videos[kind]
    wrong = any(
        [index_of(f) for f in video.read_frames(path, indices, backend="decord")] != indices
        for indices in index_sets(seed=1)
    )
    try:
        video._exact_decord(path).close()
        flagged = False
    except VideoReadError:
        flagged = True
    assert flagged == wrong


def test_pyav_reads_streams_without_timestamps_by_counting(
    videos: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream without usable pts is decoded once from the start, counting frames."""
    path = videos["h264_bframes"]
    index = video_pyav.index_packets(path)
    untimed = video_pyav.PacketIndex(None, [0], index.count, index.fps, index.width, index.height)
    indices = [77, 3, 3, 50]
    frames = video_pyav.read_pyav(path, indices, untimed)
    np.testing.assert_array_equal(frames, sequential_pyav(path)[indices])


def test_pyav_index_matches_the_video(videos: dict[str, Path]) -> None:
    index = video_pyav.index_packets(videos["h264_bframes"])
    assert index.count == COUNT and (index.width, index.height) == (64, 48)
    assert index.keys == list(range(0, COUNT, 12)) and index.fps == pytest.approx(25.0)
    vfr = video_pyav.index_packets(videos["h264_vfr"])
    assert vfr.count == COUNT and vfr.pts is not None
    gaps = set(np.diff(vfr.pts).tolist())
    assert len(gaps) == 2  # two frame durations: a variable frame rate


@pytest.mark.parametrize("backend", ["pyav", "opencv"])
def test_past_the_end_and_missing_frames_raise(videos: dict[str, Path], backend: str) -> None:
    with pytest.raises(VideoReadError, match="has 100|could not be decoded"):
        video.read_frames(videos["h264_bframes"], [3, COUNT], backend=backend)
